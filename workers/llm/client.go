// Package llm calls an OpenAI-compatible chat completions API through the
// official openai-go client, with the client's own retries off: peakdesk's
// backoff and circuit breaker are the only retry loop.
package llm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
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
	// Model is the model to ask.
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
	if cfg.Model == "" {
		return nil, errors.New("llm: config: Model is required")
	}
	cfg.Timeout = cmp.Or(cfg.Timeout, 30*time.Second)
	if cfg.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = 1024
		t.MaxIdleConnsPerHost = 1024
		cfg.HTTPClient = &http.Client{Transport: t}
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

// Model returns the model the client asks.
func (c *Client) Model() string { return c.cfg.Model }

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

// Complete asks the model to continue the conversation in turns.
func (c *Client) Complete(ctx context.Context, turns []Turn) (*Completion, error) {
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
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	resp, err := c.client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    c.cfg.Model,
		Messages: msgs,
	})
	if err != nil {
		return nil, fmt.Errorf("llm: %s: %w", c.cfg.Model, err)
	}
	if len(resp.Choices) == 0 || resp.Choices[0].Message.Content == "" {
		return nil, fmt.Errorf("llm: %s: empty completion", c.cfg.Model)
	}
	return &Completion{
		Text:             resp.Choices[0].Message.Content,
		Model:            cmp.Or(resp.Model, c.cfg.Model),
		PromptTokens:     int(resp.Usage.PromptTokens),
		CompletionTokens: int(resp.Usage.CompletionTokens),
	}, nil
}
