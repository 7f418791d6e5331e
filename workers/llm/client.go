// Package llm calls an OpenAI-compatible chat completions API through the
// official openai-go client, with the client's own retries off: peakdesk's
// backoff and circuit breaker (Caller) are the only retry loop.
//
// A call may offer tools (function calling): the Completion then carries the
// calls the model asked for, and the next call's Turns carry them back with
// their results. The package runs no tools itself.
//
// Client is one provider endpoint; Caller wraps calls to one model of one
// provider in the linear retry schedule and the circuit breaker of the
// credential (base URL, model, API key) shared by all processes through
// Redis; Prices turns token usage into cost, FXRates that cost into a
// shop's currency, and EstimatePromptTokens sizes a call before it is made.
package llm

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/peakdesk/peakdesk"
)

// Config configures a Client.
type Config struct {
	// BaseURL of the provider's API, e.g. https://api.example.com/v1.
	BaseURL string
	// APIKey is sent as a bearer token; never logged.
	APIKey string
	// Model is the model Complete asks; Do names its model per request.
	Model string
	// Timeout bounds one call. Default 30 s.
	Timeout time.Duration
	// HTTPClient defaults to a client tuned for many concurrent calls.
	HTTPClient *http.Client
}

// Client is an LLM provider client.
type Client struct {
	cfg    Config
	client openai.Client
	// tools caches each offered tool as the openai-go parameter it becomes
	// (its JSON schema decoded), by its name, description and schema: the
	// same few tools go with every call.
	tools  sync.Map     // toolKey -> openai.ChatCompletionToolUnionParam
	ntools atomic.Int32 // entries of tools, at most maxCachedTools
}

// maxCachedTools bounds the tool cache of a Client, should tools vary.
const maxCachedTools = 256

// toolKey is what a converted tool is cached by: the whole tool.
type toolKey struct{ name, description, parameters string }

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == "" {
		return nil, errors.New("llm: config: BaseURL is required")
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, 30*time.Second)
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = NewHTTPClient()
	}
	return &Client{
		cfg: cfg,
		client: openai.NewClient(
			option.WithBaseURL(cfg.BaseURL),
			option.WithAPIKey(cmp.Or(cfg.APIKey, "none")),
			option.WithHTTPClient(cfg.HTTPClient),
			option.WithMaxRetries(0),
		),
	}, nil
}

// NewHTTPClient returns an HTTP client tuned for many concurrent calls to few
// hosts. Clients of one process should share it.
func NewHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 1024
	return &http.Client{Transport: t}
}

// Model returns the model Complete asks.
func (c *Client) Model() string { return c.cfg.Model }

// BaseURL returns the provider's base URL.
func (c *Client) BaseURL() string { return c.cfg.BaseURL }

// Role of a chat turn.
type Role string

// Roles.
const (
	RoleSystem    Role = "system"
	RoleUser      Role = "user"
	RoleAssistant Role = "assistant"
	// RoleTool is the result of a tool call, sent back to the model.
	RoleTool Role = "tool"
)

// Turn is one message of the prompt.
type Turn struct {
	Role Role
	// Text is the message; for RoleTool, the tool's result. An assistant
	// turn with ToolCalls may have none.
	Text string
	// ToolCalls are the calls an assistant turn asked for; the RoleTool
	// turns that answer them follow it, one per call.
	ToolCalls []ToolCall
	// ToolCallID is the ToolCall.ID a RoleTool turn answers.
	ToolCallID string
}

// Tool is a function the model may call.
type Tool struct {
	// Name is what the model calls it by: a-z, A-Z, 0-9, _ and -, at most
	// 64 characters.
	Name string
	// Description tells the model what the tool is for and when to use it.
	Description string
	// Parameters is the JSON schema of the arguments, an object schema.
	// Empty means the tool takes none.
	Parameters json.RawMessage
}

// ToolCall is the model's request to call a tool.
type ToolCall struct {
	// ID pairs the call with its result (Turn.ToolCallID).
	ID string
	// Name is the tool's name as the model wrote it: not necessarily one
	// that was offered.
	Name string
	// Args are the arguments as the model wrote them: normally a JSON
	// object ({} when it wrote none), but not guaranteed to be valid JSON.
	Args json.RawMessage
}

// Completion is the provider's answer: text, tool calls, or both.
type Completion struct {
	// Text is the answer; it may be empty when ToolCalls is not.
	Text string
	// ToolCalls are the tools the model wants called before it answers.
	ToolCalls        []ToolCall
	Model            string
	PromptTokens     int
	CompletionTokens int
}

// Request is one chat completion call.
type Request struct {
	// Model to ask; empty = the Client's Model.
	Model string
	// Turns is the prompt, oldest first.
	Turns []Turn
	// Tools are offered to the model (OpenAI function tools).
	Tools []Tool
	// NoToolCall asks the model to answer in text (tool_choice "none")
	// while Tools stay declared, so that the earlier calls in Turns make
	// sense to it. A model may disobey; the caller must cope.
	NoToolCall bool
	// OnDelta, when set, makes the call stream: it receives each piece of
	// text as it arrives, from the calling goroutine. Tool calls are
	// gathered from the stream and only returned in the Completion.
	OnDelta func(text string)
	// MaxTokens caps the completion; 0 sends no limit. It goes out as
	// MaxTokensParam.
	MaxTokens int
	// MaxTokensParam names the request field MaxTokens is sent in:
	// ParamMaxTokens (the default) or ParamMaxCompletionTokens.
	MaxTokensParam string
	// Temperature is sent when set; nil leaves it to the provider.
	Temperature *float64
}

// The request fields a completion limit may be sent in. Exactly one is sent:
// OpenAI refuses a request that has both.
const (
	// ParamMaxTokens is "max_tokens", what OpenAI-compatible providers
	// (DeepSeek, Qwen, vLLM, Ollama, ...) and OpenAI's chat models read.
	ParamMaxTokens = "max_tokens"
	// ParamMaxCompletionTokens is "max_completion_tokens", which OpenAI's
	// reasoning models require instead (they refuse max_tokens).
	ParamMaxCompletionTokens = "max_completion_tokens"
)

// ValidMaxTokensParam reports whether p names a completion limit field ("" is
// the default, ParamMaxTokens).
func ValidMaxTokensParam(p string) bool {
	return p == "" || p == ParamMaxTokens || p == ParamMaxCompletionTokens
}

// ErrStreamBroken is wrapped by the error of a stream that broke after part
// of the answer was passed to OnDelta. The partial text is not an answer.
var ErrStreamBroken = errors.New("stream broken mid-way")

// Complete asks the Client's model to continue the conversation in turns.
func (c *Client) Complete(ctx context.Context, turns []Turn) (*Completion, error) {
	return c.Do(ctx, Request{Turns: turns})
}

// Do makes one call, streaming when req.OnDelta is set. It never retries.
func (c *Client) Do(ctx context.Context, req Request) (*Completion, error) {
	model := cmp.Or(req.Model, c.cfg.Model)
	if model == "" {
		return nil, errors.New("llm: no model named")
	}
	tools, err := c.toolParams(req.Tools)
	if err != nil {
		return nil, fmt.Errorf("llm: %s: %w", model, err)
	}
	params := openai.ChatCompletionNewParams{
		Model:    model,
		Messages: messages(req.Turns),
		Tools:    tools,
	}
	if req.NoToolCall && len(tools) > 0 {
		params.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("none")}
	}
	if req.Temperature != nil {
		params.Temperature = openai.Float(*req.Temperature)
	}
	if req.MaxTokens > 0 {
		switch req.MaxTokensParam {
		case "", ParamMaxTokens:
			params.MaxTokens = openai.Int(int64(req.MaxTokens))
		case ParamMaxCompletionTokens:
			params.MaxCompletionTokens = openai.Int(int64(req.MaxTokens))
		default:
			return nil, fmt.Errorf("llm: %s: %w: unknown max tokens field %q", model, errBadRequest, req.MaxTokensParam)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	ctx, usage := withUsageReport(ctx)
	defer usage.report(-1) // a call that ended without usage
	opts := traceOption(ctx)
	if req.OnDelta != nil {
		return c.stream(ctx, model, params, req.OnDelta, usage, opts)
	}
	resp, err := c.client.Chat.Completions.New(ctx, params, opts...)
	if err != nil {
		return nil, fmt.Errorf("llm: %s: %w", model, err)
	}
	usage.report(usedTokens(resp.Usage.PromptTokens, resp.Usage.CompletionTokens))
	if len(resp.Choices) == 0 {
		return nil, fmt.Errorf("llm: %s: %w", model, errEmpty)
	}
	msg := resp.Choices[0].Message
	out := &Completion{
		Text:             msg.Content,
		ToolCalls:        toolCalls(msg.ToolCalls),
		Model:            cmp.Or(resp.Model, model),
		PromptTokens:     int(resp.Usage.PromptTokens),
		CompletionTokens: int(resp.Usage.CompletionTokens),
	}
	if out.Text == "" && len(out.ToolCalls) == 0 {
		return nil, fmt.Errorf("llm: %s: %w", model, errEmpty)
	}
	return out, nil
}

// errEmpty is a completion without text or tool calls: the provider
// misbehaved.
var errEmpty = errors.New("empty completion")

// errStreamEnded is a stream that ended without a finish reason or error
// before any text arrived.
var errStreamEnded = errors.New("stream ended before the answer")

// errBadChunk is a stream chunk that does not continue the ones before it.
var errBadChunk = errors.New("stream chunk does not fit the stream")

// errBadRequest is a request we cannot send as asked (a tool's schema is
// not JSON): our fault, never the provider's, and asking again won't help.
var errBadRequest = errors.New("bad request")

func (c *Client) stream(ctx context.Context, model string, params openai.ChatCompletionNewParams,
	onDelta func(string), usage *usageReport, opts []option.RequestOption) (*Completion, error) {
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	s := c.client.Chat.Completions.NewStreaming(ctx, params, opts...)
	defer s.Close()
	var (
		// The accumulator puts the tool calls' pieces together (they come
		// by index, the name first, then the arguments in pieces) and sums
		// the usage; the text goes to onDelta as it comes.
		acc      openai.ChatCompletionAccumulator
		shown    int // bytes of text passed to onDelta
		finished bool
		err      error
	)
	for s.Next() {
		chunk := s.Current()
		if acc.ID != "" {
			// The accumulator refuses a chunk whose id differs from the
			// first one's; some OpenAI-compatible servers vary or drop it,
			// and we have no use for it.
			chunk.ID = acc.ID
		}
		if !acc.AddChunk(chunk) {
			err = errBadChunk
			break
		}
		for _, ch := range chunk.Choices {
			if ch.Index != 0 {
				continue
			}
			if ch.Delta.Content != "" {
				shown += len(ch.Delta.Content)
				onDelta(ch.Delta.Content)
			}
			if ch.FinishReason != "" {
				finished = true
			}
		}
	}
	err = cmp.Or(err, s.Err())
	// The usage comes in the last chunk; a stream that broke before it
	// reports none.
	usage.report(usedTokens(acc.Usage.PromptTokens, acc.Usage.CompletionTokens))
	out := Completion{
		Model:            cmp.Or(acc.Model, model),
		PromptTokens:     int(acc.Usage.PromptTokens),
		CompletionTokens: int(acc.Usage.CompletionTokens),
	}
	if len(acc.Choices) > 0 {
		out.Text = acc.Choices[0].Message.Content
		out.ToolCalls = toolCalls(acc.Choices[0].Message.ToolCalls)
	}
	switch {
	case err == nil && finished && (out.Text != "" || len(out.ToolCalls) > 0):
		return &out, nil
	case err == nil && finished:
		err = errEmpty
	case err == nil:
		err = errStreamEnded
	}
	if shown > 0 {
		// The customer has seen part of an answer: retrying here would show
		// a second one, so the caller falls back instead.
		return nil, fmt.Errorf("llm: %s: %w after %d bytes: %w", model, ErrStreamBroken, shown, err)
	}
	return nil, fmt.Errorf("llm: %s: %w", model, err)
}

// traceOption sends the trace ctx carries (peakdesk.WithTrace) to the
// provider as its traceparent header, so a call can be found in the
// provider's logs by the trace id of the message it answers.
func traceOption(ctx context.Context) []option.RequestOption {
	if t := peakdesk.TraceFrom(ctx); t.Parent != "" {
		return []option.RequestOption{option.WithHeader(peakdesk.TraceHeader, t.Parent)}
	}
	return nil
}

func messages(turns []Turn) []openai.ChatCompletionMessageParamUnion {
	msgs := make([]openai.ChatCompletionMessageParamUnion, 0, len(turns))
	for _, t := range turns {
		switch t.Role {
		case RoleSystem:
			msgs = append(msgs, openai.SystemMessage(t.Text))
		case RoleAssistant:
			if len(t.ToolCalls) == 0 {
				msgs = append(msgs, openai.AssistantMessage(t.Text))
				continue
			}
			m := openai.ChatCompletionAssistantMessageParam{}
			if t.Text != "" {
				m.Content.OfString = openai.String(t.Text)
			}
			for _, tc := range t.ToolCalls {
				m.ToolCalls = append(m.ToolCalls, openai.ChatCompletionMessageToolCallUnionParam{
					OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
						ID:       tc.ID,
						Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: tc.Name, Arguments: string(tc.Args)},
					},
				})
			}
			msgs = append(msgs, openai.ChatCompletionMessageParamUnion{OfAssistant: &m})
		case RoleTool:
			msgs = append(msgs, openai.ToolMessage(t.Text, t.ToolCallID))
		default:
			msgs = append(msgs, openai.UserMessage(t.Text))
		}
	}
	return msgs
}

// toolParams turns tools into OpenAI function tools, each converted once
// (the parameters are only read when a request is encoded, so one
// conversion serves concurrent calls).
func (c *Client) toolParams(tools []Tool) ([]openai.ChatCompletionToolUnionParam, error) {
	if len(tools) == 0 {
		return nil, nil
	}
	out := make([]openai.ChatCompletionToolUnionParam, 0, len(tools))
	for _, t := range tools {
		key := toolKey{t.Name, t.Description, string(t.Parameters)}
		if p, ok := c.tools.Load(key); ok {
			out = append(out, p.(openai.ChatCompletionToolUnionParam))
			continue
		}
		p, err := toolParam(t)
		if err != nil {
			return nil, err
		}
		if c.ntools.Load() < maxCachedTools {
			if _, loaded := c.tools.LoadOrStore(key, p); !loaded {
				c.ntools.Add(1)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// toolParam turns t into an OpenAI function tool.
func toolParam(t Tool) (openai.ChatCompletionToolUnionParam, error) {
	def := shared.FunctionDefinitionParam{Name: t.Name}
	if t.Description != "" {
		def.Description = openai.String(t.Description)
	}
	if len(bytes.TrimSpace(t.Parameters)) > 0 {
		if err := json.Unmarshal(t.Parameters, &def.Parameters); err != nil {
			return openai.ChatCompletionToolUnionParam{}, fmt.Errorf("%w: tool %s: parameters: %w", errBadRequest, t.Name, err)
		}
	}
	return openai.ChatCompletionFunctionTool(def), nil
}

// toolCalls returns the function calls among calls (custom tools are never
// offered, so their calls are dropped).
func toolCalls(calls []openai.ChatCompletionMessageToolCallUnion) []ToolCall {
	var out []ToolCall
	for _, c := range calls {
		if (c.Type != "" && c.Type != "function") || c.Function.Name == "" {
			continue
		}
		args := json.RawMessage(c.Function.Arguments)
		if len(bytes.TrimSpace(args)) == 0 {
			args = json.RawMessage(`{}`)
		}
		out = append(out, ToolCall{ID: c.ID, Name: c.Function.Name, Args: args})
	}
	return out
}
