// Package llm calls an OpenAI-compatible chat completions API through the
// official openai-go client, with the client's own retries off: peakdesk's
// backoff and circuit breaker (Caller) are the only retry loop.
//
// Client is one provider endpoint; Caller wraps calls to one model of one
// provider in the linear retry schedule and the provider+model circuit
// breaker shared by all processes through Redis; Prices turns token usage
// into cost.
package llm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
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
}

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
)

// Turn is one message of the prompt.
type Turn struct {
	Role Role
	Text string
}

// Completion is the provider's answer.
type Completion struct {
	Text             string
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
	// OnDelta, when set, makes the call stream: it receives each piece of
	// text as it arrives, from the calling goroutine.
	OnDelta func(text string)
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
	params := openai.ChatCompletionNewParams{
		Model:    model,
		Messages: messages(req.Turns),
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if req.OnDelta != nil {
		return c.stream(ctx, model, params, req.OnDelta)
	}
	resp, err := c.client.Chat.Completions.New(ctx, params)
	if err != nil {
		return nil, fmt.Errorf("llm: %s: %w", model, err)
	}
	if len(resp.Choices) == 0 || resp.Choices[0].Message.Content == "" {
		return nil, fmt.Errorf("llm: %s: %w", model, errEmpty)
	}
	return &Completion{
		Text:             resp.Choices[0].Message.Content,
		Model:            cmp.Or(resp.Model, model),
		PromptTokens:     int(resp.Usage.PromptTokens),
		CompletionTokens: int(resp.Usage.CompletionTokens),
	}, nil
}

// errEmpty is a completion without text: the provider misbehaved.
var errEmpty = errors.New("empty completion")

// errStreamEnded is a stream that ended without a finish reason or error
// before any text arrived.
var errStreamEnded = errors.New("stream ended before the answer")

func (c *Client) stream(ctx context.Context, model string, params openai.ChatCompletionNewParams,
	onDelta func(string)) (*Completion, error) {
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	s := c.client.Chat.Completions.NewStreaming(ctx, params)
	defer s.Close()
	var (
		text     strings.Builder
		out      = Completion{Model: model}
		finished bool
	)
	for s.Next() {
		chunk := s.Current()
		out.Model = cmp.Or(chunk.Model, out.Model)
		if chunk.Usage.PromptTokens > 0 || chunk.Usage.CompletionTokens > 0 {
			out.PromptTokens = int(chunk.Usage.PromptTokens)
			out.CompletionTokens = int(chunk.Usage.CompletionTokens)
		}
		for _, ch := range chunk.Choices {
			if ch.Index != 0 {
				continue
			}
			if ch.Delta.Content != "" {
				text.WriteString(ch.Delta.Content)
				onDelta(ch.Delta.Content)
			}
			if ch.FinishReason != "" {
				finished = true
			}
		}
	}
	err := s.Err()
	switch {
	case err == nil && finished && text.Len() > 0:
		out.Text = text.String()
		return &out, nil
	case err == nil && finished:
		err = errEmpty
	case err == nil:
		err = errStreamEnded
	}
	if text.Len() > 0 {
		// The customer has seen part of an answer: retrying here would show
		// a second one, so the caller falls back instead.
		return nil, fmt.Errorf("llm: %s: %w after %d bytes: %w", model, ErrStreamBroken, text.Len(), err)
	}
	return nil, fmt.Errorf("llm: %s: %w", model, err)
}

func messages(turns []Turn) []openai.ChatCompletionMessageParamUnion {
	msgs := make([]openai.ChatCompletionMessageParamUnion, 0, len(turns))
	for _, t := range turns {
		switch t.Role {
		case RoleSystem:
			msgs = append(msgs, openai.SystemMessage(t.Text))
		case RoleAssistant:
			msgs = append(msgs, openai.AssistantMessage(t.Text))
		default:
			msgs = append(msgs, openai.UserMessage(t.Text))
		}
	}
	return msgs
}
