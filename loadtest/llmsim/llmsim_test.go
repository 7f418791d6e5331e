package llmsim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// llmTestBundle is what each LLM simulator test works with.
type llmTestBundle struct {
	sim    *Sim
	srv    *httptest.Server
	client openai.Client
}

// llmSetup starts a simulator with faults f behind a real HTTP server. The
// optional clock replaces the clock of the rate limits.
func llmSetup(t *testing.T, f Faults, clock *llmFakeClock) *llmTestBundle {
	t.Helper()
	sim := New(f)
	if clock != nil {
		sim.now = clock.Now
		sim.resetLimits(sim.Faults(), clock.Now())
	}
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	client := openai.NewClient(
		option.WithBaseURL(srv.URL+"/v1"),
		option.WithMaxRetries(0),
		option.WithAPIKey("test"),
	)
	return &llmTestBundle{sim: sim, srv: srv, client: client}
}

// llmFakeClock is a clock that moves only when told to.
type llmFakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *llmFakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *llmFakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// llmAllTools offers every function the simulator knows.
func llmAllTools() []openai.ChatCompletionToolUnionParam {
	return llmTools(llmToolNames[:]...)
}

func llmTools(names ...string) []openai.ChatCompletionToolUnionParam {
	var tools []openai.ChatCompletionToolUnionParam
	for _, name := range names {
		tools = append(tools, openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name:       name,
			Parameters: shared.FunctionParameters{"type": "object"},
		}))
	}
	return tools
}

func llmUserParams(text string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(text)},
	}
}

// llmPost sends a raw request and returns the response with its body read.
func llmPost(t *testing.T, method, url, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return res, b
}

// llmEventually polls cond until it holds or the deadline passes.
func llmEventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// llmQuote is how an answer quotes the user's text.
func llmQuote(text string) string {
	if llmHasCJK(text) {
		return "「" + text + "」"
	}
	return `"` + text + `"`
}

func TestLLMChatCompletion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		message openai.ChatCompletionMessageParamUnion
		text    string
	}{
		{"english", openai.UserMessage("Where is my parcel?"), "Where is my parcel?"},
		{"chinese", openai.UserMessage("你好，我的快递到哪里了？"), "你好，我的快递到哪里了？"},
		{"content parts", openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
			openai.TextContentPart("Do you ship "), openai.TextContentPart("to Macau?"),
		}), "Do you ship to Macau?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, Faults{}, nil)
			res, err := b.client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
				Model: "gpt-test",
				Messages: []openai.ChatCompletionMessageParamUnion{
					openai.SystemMessage("You are a shop assistant."),
					openai.UserMessage("an earlier question"),
					openai.AssistantMessage("an earlier answer"),
					tt.message,
				},
			})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if res.Object != "chat.completion" || res.Model != "gpt-test" || len(res.Choices) != 1 {
				t.Fatalf("object %q, model %q, %d choices", res.Object, res.Model, len(res.Choices))
			}
			c := res.Choices[0]
			if !strings.Contains(c.Message.Content, llmQuote(tt.text)) {
				t.Errorf("content %q does not quote %q", c.Message.Content, tt.text)
			}
			if strings.Contains(c.Message.Content, "earlier question") {
				t.Errorf("content %q quotes an older message", c.Message.Content)
			}
			if c.FinishReason != "stop" || len(c.Message.ToolCalls) != 0 {
				t.Errorf("finish_reason %q with %d tool calls, want stop and none", c.FinishReason, len(c.Message.ToolCalls))
			}
			u := res.Usage
			if u.PromptTokens <= 0 || u.CompletionTokens <= 0 || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
				t.Errorf("usage %+v", u)
			}
			st := b.sim.Stats()
			if st.Requests != 1 || st.ByStatus[200] != 1 || st.PromptTokens != u.PromptTokens ||
				st.CompletionTokens != u.CompletionTokens {
				t.Errorf("stats %+v after one call with usage %+v", st, u)
			}
		})
	}
}

func TestLLMDefaultModel(t *testing.T) {
	t.Parallel()
	b := llmSetup(t, Faults{Model: "sim-model"}, nil)

	res, body := llmPost(t, http.MethodPost, b.srv.URL+"/v1/chat/completions",
		`{"messages":[{"role":"user","content":"hello"}]}`)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var got struct {
		Model string `json:"model"`
	}
	if err := json.Unmarshal(body, &got); err != nil || got.Model != "sim-model" {
		t.Errorf("model %q (%v), want sim-model", got.Model, err)
	}

	models, err := b.client.Models.List(t.Context())
	if err != nil {
		t.Fatalf("Models.List: %v", err)
	}
	if len(models.Data) != 1 || models.Data[0].ID != "sim-model" {
		t.Errorf("models %+v, want sim-model", models.Data)
	}
}

func TestLLMStreaming(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		text     string
		wantTool string
		wantArg  string
	}{
		{name: "text", text: "Do you have this jacket in size M?"},
		{name: "chinese text", text: "这件外套有M码吗？"},
		{name: "tool call", text: "请帮我退款，订单号 20240611001", wantTool: "request_refund", wantArg: "20240611001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, Faults{}, nil)
			params := llmUserParams(tt.text)
			params.Tools = llmAllTools()
			params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			stream := b.client.Chat.Completions.NewStreaming(t.Context(), params)
			defer stream.Close()

			var acc openai.ChatCompletionAccumulator
			chunks := 0
			for stream.Next() {
				chunks++
				if !acc.AddChunk(stream.Current()) {
					t.Fatalf("chunk %d rejected by the accumulator", chunks)
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatalf("stream: %v", err)
			}
			if chunks < 4 {
				t.Errorf("%d chunks, want the answer split over several", chunks)
			}
			if acc.Usage.PromptTokens <= 0 || acc.Usage.CompletionTokens <= 0 {
				t.Errorf("usage %+v, want tokens", acc.Usage)
			}
			if len(acc.Choices) != 1 {
				t.Fatalf("%d choices", len(acc.Choices))
			}
			msg := acc.Choices[0].Message
			if tt.wantTool == "" {
				if !strings.Contains(msg.Content, llmQuote(tt.text)) {
					t.Errorf("content %q does not quote %q", msg.Content, tt.text)
				}
				if acc.Choices[0].FinishReason != "stop" {
					t.Errorf("finish_reason %q", acc.Choices[0].FinishReason)
				}
			} else {
				if len(msg.ToolCalls) != 1 || msg.ToolCalls[0].Function.Name != tt.wantTool ||
					!strings.Contains(msg.ToolCalls[0].Function.Arguments, tt.wantArg) {
					t.Fatalf("tool calls %+v, want %s with %s", msg.ToolCalls, tt.wantTool, tt.wantArg)
				}
				if !json.Valid([]byte(msg.ToolCalls[0].Function.Arguments)) {
					t.Errorf("arguments %q are not JSON", msg.ToolCalls[0].Function.Arguments)
				}
				if acc.Choices[0].FinishReason != "tool_calls" {
					t.Errorf("finish_reason %q", acc.Choices[0].FinishReason)
				}
			}
			st := b.sim.Stats()
			if st.Streams != 1 || st.StreamsCut != 0 || st.ByStatus[200] != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestLLMToolCalls(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		text     string
		tools    []string // nil: all
		wantTool string   // empty: a text answer
		wantArgs map[string]any
	}{
		{name: "refund with order #", text: "I want a refund for order #1234",
			wantTool: "request_refund", wantArgs: map[string]any{"order_id": "1234"}},
		{name: "refund chinese", text: "请帮我退款，订单号 20240611",
			wantTool: "request_refund", wantArgs: map[string]any{"order_id": "20240611"}},
		{name: "coupon for late package", text: "My package 123456 is so late, I want a coupon",
			wantTool: "issue_coupon", wantArgs: map[string]any{"order_id": "123456", "amount_cents": float64(llmCouponCents)}},
		{name: "coupon chinese without order", text: "快递太慢了，我要投诉，给我优惠券",
			wantTool: "issue_coupon", wantArgs: map[string]any{"amount_cents": float64(llmCouponCents)}},
		{name: "lookup parcel", text: "Where is my parcel 987654321?",
			wantTool: "lookup_order", wantArgs: map[string]any{"order_id": "987654321"}},
		{name: "lookup chinese", text: "我的订单 556677889 到哪了",
			wantTool: "lookup_order", wantArgs: map[string]any{"order_id": "556677889"}},
		{name: "handoff chinese", text: "转人工", wantTool: "handoff_to_human"},
		{name: "handoff english", text: "Can I speak to a real person please?", wantTool: "handoff_to_human"},
		{name: "refund not offered falls to lookup", text: "refund order 123456", tools: []string{"lookup_order"},
			wantTool: "lookup_order", wantArgs: map[string]any{"order_id": "123456"}},
		{name: "no tools offered", text: "refund order 123456", tools: []string{}},
		{name: "refund without order number", text: "I want a refund"},
		{name: "short number is no order", text: "where is order 12345"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, Faults{}, nil)
			params := llmUserParams(tt.text)
			params.Tools = llmAllTools()
			if tt.tools != nil {
				params.Tools = llmTools(tt.tools...)
			}
			res, err := b.client.Chat.Completions.New(t.Context(), params)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			c := res.Choices[0]
			if tt.wantTool == "" {
				if len(c.Message.ToolCalls) != 0 || c.FinishReason != "stop" {
					t.Fatalf("got tool calls %+v (finish %q), want text", c.Message.ToolCalls, c.FinishReason)
				}
				if !strings.Contains(c.Message.Content, llmQuote(tt.text)) {
					t.Errorf("content %q does not quote %q", c.Message.Content, tt.text)
				}
				return
			}
			if c.FinishReason != "tool_calls" || len(c.Message.ToolCalls) != 1 {
				t.Fatalf("finish %q, tool calls %+v, want one %s", c.FinishReason, c.Message.ToolCalls, tt.wantTool)
			}
			call := c.Message.ToolCalls[0]
			if call.Function.Name != tt.wantTool || call.ID == "" || call.Type != "function" {
				t.Fatalf("tool call %+v, want %s", call, tt.wantTool)
			}
			var args map[string]any
			if err := json.Unmarshal([]byte(call.Function.Arguments), &args); err != nil {
				t.Fatalf("arguments %q: %v", call.Function.Arguments, err)
			}
			for k, want := range tt.wantArgs {
				if args[k] != want {
					t.Errorf("argument %s = %v, want %v (all: %s)", k, args[k], want, call.Function.Arguments)
				}
			}
			if _, ok := tt.wantArgs["order_id"]; !ok && args["order_id"] != nil {
				t.Errorf("unexpected order_id in %s", call.Function.Arguments)
			}
			if st := b.sim.Stats(); st.ToolCalls[tt.wantTool] != 1 {
				t.Errorf("tool call stats %v", st.ToolCalls)
			}
		})
	}
}

func TestLLMToolResultAnswer(t *testing.T) {
	t.Parallel()
	b := llmSetup(t, Faults{}, nil)
	user := "I want a refund for order 123456"
	params := llmUserParams(user)
	params.Tools = llmAllTools()
	first, err := b.client.Chat.Completions.New(t.Context(), params)
	if err != nil {
		t.Fatalf("first call: %v", err)
	}
	if len(first.Choices[0].Message.ToolCalls) != 1 {
		t.Fatalf("first call: no tool call: %+v", first.Choices[0].Message)
	}
	call := first.Choices[0].Message.ToolCalls[0]
	result := `{"refund_id":"R-77","status":"accepted"}`
	params.Messages = append(params.Messages, first.Choices[0].Message.ToParam(), openai.ToolMessage(result, call.ID))

	second, err := b.client.Chat.Completions.New(t.Context(), params)
	if err != nil {
		t.Fatalf("second call: %v", err)
	}
	msg := second.Choices[0].Message
	if len(msg.ToolCalls) != 0 || second.Choices[0].FinishReason != "stop" {
		t.Fatalf("second call answered with a tool call again: %+v", msg)
	}
	if !strings.Contains(msg.Content, llmQuote(user)) || !strings.Contains(msg.Content, result) {
		t.Errorf("content %q should quote %q and include %q", msg.Content, user, result)
	}
}

func TestLLMErrorStatuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status   int
		wantCode string
	}{
		{http.StatusTooManyRequests, "rate_limit_exceeded"},
		{http.StatusInternalServerError, "server_error"},
		{http.StatusServiceUnavailable, "service_unavailable"},
		{529, "overloaded"},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, Faults{
				ErrorRate:     1,
				ErrorStatuses: map[int]float64{tt.status: 1},
				RetryAfter:    1500 * time.Millisecond,
			}, nil)
			_, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello"))
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *openai.Error", err)
			}
			if apiErr.StatusCode != tt.status || apiErr.Code != tt.wantCode || apiErr.Message == "" {
				t.Errorf("status %d code %q message %q, want %d %q", apiErr.StatusCode, apiErr.Code, apiErr.Message,
					tt.status, tt.wantCode)
			}
			h := apiErr.Response.Header
			if tt.status == http.StatusTooManyRequests {
				if h.Get("Retry-After") != "2" || h.Get("retry-after-ms") != "1500" {
					t.Errorf("Retry-After %q retry-after-ms %q, want 2 and 1500", h.Get("Retry-After"), h.Get("retry-after-ms"))
				}
			} else if h.Get("Retry-After") != "" {
				t.Errorf("Retry-After %q on %d", h.Get("Retry-After"), tt.status)
			}
			if st := b.sim.Stats(); st.Requests != 1 || st.ByStatus[tt.status] != 1 || st.PromptTokens != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestLLMHardFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		faults     Faults
		wantStatus int
		wantCode   string
	}{
		{"insufficient quota", Faults{InsufficientQuota: true}, http.StatusTooManyRequests, "insufficient_quota"},
		{"outage", Faults{Outage: true, Latency: time.Hour}, http.StatusServiceUnavailable, "service_unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, tt.faults, nil)
			for range 3 {
				_, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello"))
				var apiErr *openai.Error
				if !errors.As(err, &apiErr) {
					t.Fatalf("err = %v, want *openai.Error", err)
				}
				if apiErr.StatusCode != tt.wantStatus || apiErr.Code != tt.wantCode {
					t.Errorf("status %d code %q, want %d %q", apiErr.StatusCode, apiErr.Code, tt.wantStatus, tt.wantCode)
				}
				if ra := apiErr.Response.Header.Get("Retry-After"); ra != "" {
					t.Errorf("Retry-After %q, want none", ra)
				}
			}
			if st := b.sim.Stats(); st.ByStatus[tt.wantStatus] != 3 {
				t.Errorf("by status %v, want 3 × %d", st.ByStatus, tt.wantStatus)
			}
		})
	}
}

// llmRateLimited asserts a 429 rate_limit_exceeded of the given type and waits.
func llmRateLimited(t *testing.T, err error, typ, retryAfter, retryAfterMS string) {
	t.Helper()
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("err = %v, want a 429", err)
	}
	h := apiErr.Response.Header
	if apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Code != "rate_limit_exceeded" || apiErr.Type != typ {
		t.Errorf("status %d code %q type %q, want 429 rate_limit_exceeded %s", apiErr.StatusCode, apiErr.Code, apiErr.Type, typ)
	}
	if h.Get("Retry-After") != retryAfter || h.Get("retry-after-ms") != retryAfterMS {
		t.Errorf("Retry-After %q retry-after-ms %q, want %s and %s", h.Get("Retry-After"), h.Get("retry-after-ms"),
			retryAfter, retryAfterMS)
	}
}

func TestLLMRateLimitRPM(t *testing.T) {
	t.Parallel()
	clock := &llmFakeClock{t: time.Date(2025, 11, 11, 0, 0, 0, 0, time.UTC)}
	// 120 per minute: a burst of 2, then one every 500 ms.
	b := llmSetup(t, Faults{RPM: 120}, clock)
	call := func() error {
		_, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello"))
		return err
	}
	for i := range 2 {
		if err := call(); err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
	}
	llmRateLimited(t, call(), "requests", "1", "500")
	clock.Advance(200 * time.Millisecond)
	llmRateLimited(t, call(), "requests", "1", "300")
	clock.Advance(300 * time.Millisecond)
	if err := call(); err != nil {
		t.Fatalf("call after the slot freed: %v", err)
	}
	llmRateLimited(t, call(), "requests", "1", "500")
	if st := b.sim.Stats(); st.ByStatus[200] != 3 || st.ByStatus[429] != 3 {
		t.Errorf("by status %v, want 3 × 200 and 3 × 429", st.ByStatus)
	}
}

func TestLLMRateLimitTPM(t *testing.T) {
	t.Parallel()
	clock := &llmFakeClock{t: time.Date(2025, 11, 11, 0, 0, 0, 0, time.UTC)}
	// 600 tokens per minute: a burst of 10 tokens, then 10 per second; a
	// request may overdraw the bucket, and the next one waits for the debt.
	b := llmSetup(t, Faults{TPM: 600}, clock)
	res, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello there"))
	if err != nil {
		t.Fatalf("first call: %v", err)
	}
	cost := res.Usage.TotalTokens
	if cost <= 10 {
		t.Fatalf("cost %d tokens, the test needs more than the burst", cost)
	}
	_, err = b.client.Chat.Completions.New(t.Context(), llmUserParams("hello there"))
	// One token is needed; the balance is 10-cost; refill is 10 tokens/s = 100 ms per token.
	waitMS := int64(1-(10-cost)) * 100
	llmRateLimited(t, err, "tokens", strconv.FormatInt((waitMS+999)/1000, 10), strconv.FormatInt(waitMS, 10))
	clock.Advance(time.Duration(waitMS) * time.Millisecond)
	if _, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello there")); err != nil {
		t.Fatalf("call after the debt is paid: %v", err)
	}
}

func TestLLMLatency(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		faults  Faults
		atLeast time.Duration
	}{
		{"mean", Faults{Latency: 150 * time.Millisecond}, 150 * time.Millisecond},
		{"jitter", Faults{Latency: 200 * time.Millisecond, LatencyJitter: 50 * time.Millisecond}, 150 * time.Millisecond},
		{"slow tail", Faults{SlowRate: 1, Slow: 150 * time.Millisecond}, 150 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, tt.faults, nil)
			start := time.Now()
			if _, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello")); err != nil {
				t.Fatalf("New: %v", err)
			}
			if took := time.Since(start); took < tt.atLeast {
				t.Errorf("answered after %v, want at least %v", took, tt.atLeast)
			}
		})
	}
}

// TestLLMClientGone covers waits that must end when the client goes away.
func TestLLMClientGone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		faults Faults
	}{
		{"hang", Faults{Hang: true}},
		{"long latency", Faults{Latency: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, tt.faults, nil)
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			_, err := b.client.Chat.Completions.New(ctx, llmUserParams("hello"))
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v, want the client's deadline", err)
			}
			// The handler returns once it notices the client is gone.
			llmEventually(t, 5*time.Second, "the handler to return", func() bool {
				st := b.sim.Stats()
				return st.InFlight == 0 && st.ByStatus[llmStatusClientGone] == 1
			})
		})
	}
}

func TestLLMStreamCut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		text  string
		seed  uint64
		tools bool
	}{
		{name: "text seed 1", text: "Is the blue mug dishwasher safe?", seed: 1},
		{name: "text seed 2", text: "这个杯子可以用洗碗机吗？", seed: 2},
		{name: "text seed 3", text: "Is the red mug dishwasher safe?", seed: 3},
		{name: "tool call", text: "Where is my package 12345678?", seed: 4, tools: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := llmSetup(t, Faults{StreamCutRate: 1, Seed: tt.seed}, nil)
			params := llmUserParams(tt.text)
			if tt.tools {
				params.Tools = llmAllTools()
			}
			stream := b.client.Chat.Completions.NewStreaming(t.Context(), params)
			defer stream.Close()
			deltas := 0
			for stream.Next() {
				for _, c := range stream.Current().Choices {
					if c.Delta.Content != "" || len(c.Delta.ToolCalls) > 0 {
						deltas++
					}
					if c.FinishReason != "" {
						t.Errorf("got finish_reason %q from a stream that should be cut", c.FinishReason)
					}
				}
			}
			if stream.Err() == nil {
				t.Fatal("stream ended cleanly, want an error from the cut connection")
			}
			if deltas == 0 {
				t.Error("no delta before the cut")
			}
			llmEventually(t, 5*time.Second, "the handler to return", func() bool {
				st := b.sim.Stats()
				return st.InFlight == 0 && st.StreamsCut == 1 && st.Streams == 1 && st.CompletionTokens == 0
			})
		})
	}
}

func TestLLMAdminFaults(t *testing.T) {
	t.Parallel()
	b := llmSetup(t, Faults{Latency: 5 * time.Millisecond}, nil)
	url := b.srv.URL + "/admin/faults"

	res, body := llmPost(t, http.MethodGet, url, "")
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET faults: %d %s (%v)", res.StatusCode, body, err)
	}
	if got["latency_ms"] != float64(5) || got["error_rate"] != float64(0) || got["model"] != llmDefaultModel ||
		got["retry_after_ms"] != float64(1000) {
		t.Errorf("GET faults: %s", body)
	}

	// A partial update changes only the given fields.
	res, body = llmPost(t, http.MethodPut, url, `{"error_rate":1,"error_statuses":{"503":1}}`)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("PUT faults: %d %s", res.StatusCode, body)
	}
	f := b.sim.Faults()
	if f.ErrorRate != 1 || len(f.ErrorStatuses) != 1 || f.ErrorStatuses[503] != 1 || f.Latency != 5*time.Millisecond {
		t.Errorf("faults after PUT: %+v", f)
	}
	_, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello"))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after PUT: err = %v, want 503", err)
	}

	// error_statuses is replaced as a whole.
	res, body = llmPost(t, http.MethodPut, url, `{"error_statuses":{"500":2}}`)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("PUT faults: %d %s", res.StatusCode, body)
	}
	if f := b.sim.Faults(); len(f.ErrorStatuses) != 1 || f.ErrorStatuses[500] != 2 {
		t.Errorf("error statuses after PUT: %v", f.ErrorStatuses)
	}

	for _, bad := range []string{
		`{"error_rate":2}`,
		`{"latency":5}`,
		`{"error_statuses":{"200":1}}`,
		`{"latency_ms":-1}`,
		`not json`,
	} {
		before := b.sim.Faults()
		res, body := llmPost(t, http.MethodPut, url, bad)
		if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"error"`) {
			t.Errorf("PUT %s: %d %s, want 400 with an error body", bad, res.StatusCode, body)
		}
		after := b.sim.Faults()
		if after.ErrorRate != before.ErrorRate || after.Latency != before.Latency || len(after.ErrorStatuses) != 1 {
			t.Errorf("PUT %s changed the faults: %+v", bad, after)
		}
	}

	// SetFaults takes effect at once too.
	b.sim.SetFaults(Faults{})
	if _, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("hello")); err != nil {
		t.Errorf("after SetFaults(zero): %v", err)
	}
}

func TestLLMStats(t *testing.T) {
	t.Parallel()
	b := llmSetup(t, Faults{
		Latency:       2 * time.Millisecond,
		ErrorRate:     0.3,
		ErrorStatuses: map[int]float64{500: 1},
		Seed:          42,
	}, nil)
	const n = 200
	var (
		wg           sync.WaitGroup
		mu           sync.Mutex
		ok, failed   int64
		promptTokens int64
	)
	for i := range n {
		wg.Go(func() {
			res, err := b.client.Chat.Completions.New(t.Context(), llmUserParams("question "+strconv.Itoa(i)))
			mu.Lock()
			defer mu.Unlock()
			var apiErr *openai.Error
			switch {
			case err == nil:
				ok++
				promptTokens += res.Usage.PromptTokens
			case errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusInternalServerError:
				failed++
			default:
				t.Errorf("call %d: %v", i, err)
			}
		})
	}
	wg.Wait()

	st := b.sim.Stats()
	if st.Requests != n || st.ByStatus[200] != ok || st.ByStatus[500] != failed || ok+failed != n {
		t.Errorf("stats %+v; client saw %d ok and %d failed", st, ok, failed)
	}
	if ok == 0 || failed == 0 {
		t.Errorf("%d ok and %d failed, want both with error_rate 0.3", ok, failed)
	}
	if st.PromptTokens != promptTokens || st.InFlight != 0 || st.MaxInFlight < 1 {
		t.Errorf("stats %+v; client saw %d prompt tokens", st, promptTokens)
	}

	res, body := llmPost(t, http.MethodPost, b.srv.URL+"/admin/reset", "")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("reset: %d %s", res.StatusCode, body)
	}
	res, body = llmPost(t, http.MethodGet, b.srv.URL+"/admin/stats", "")
	var after Stats
	if err := json.Unmarshal(body, &after); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("stats: %d %s (%v)", res.StatusCode, body, err)
	}
	if after.Requests != 0 || len(after.ByStatus) != 0 || after.PromptTokens != 0 {
		t.Errorf("stats after reset: %s", body)
	}
}

// TestLLMSeedReproducible proves that the same seed gives the same faults in the same order.
func TestLLMSeedReproducible(t *testing.T) {
	t.Parallel()
	faults := Faults{ErrorRate: 0.5, ErrorStatuses: map[int]float64{429: 1, 500: 1, 503: 2}, Seed: 7}
	run := func() []int {
		b := llmSetup(t, faults, nil)
		var statuses []int
		for range 40 {
			res, _ := llmPost(t, http.MethodPost, b.srv.URL+"/v1/chat/completions",
				`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			statuses = append(statuses, res.StatusCode)
		}
		return statuses
	}
	first, second := run(), run()
	seen := map[int]bool{}
	for i := range first {
		seen[first[i]] = true
		if first[i] != second[i] {
			t.Fatalf("runs differ at request %d: %v vs %v", i, first, second)
		}
	}
	for _, st := range []int{200, 429, 500, 503} {
		if !seen[st] {
			t.Errorf("status %d never seen in %v", st, first)
		}
	}
}

func TestLLMBadRequests(t *testing.T) {
	t.Parallel()
	b := llmSetup(t, Faults{}, nil)
	url := b.srv.URL + "/v1/chat/completions"
	tests := []struct {
		name, method, body string
		want               int
	}{
		{"not json", http.MethodPost, `{"messages":`, http.StatusBadRequest},
		{"no messages", http.MethodPost, `{"model":"m","messages":[]}`, http.StatusBadRequest},
		{"wrong method", http.MethodGet, ``, http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		res, body := llmPost(t, tt.method, url, tt.body)
		if res.StatusCode != tt.want {
			t.Errorf("%s: %d %s, want %d", tt.name, res.StatusCode, body, tt.want)
		}
	}
	if st := b.sim.Stats(); st.ByStatus[400] != 2 || st.Requests != 2 {
		t.Errorf("stats %+v, want two 400s", st)
	}
}

func TestLLMCountTokens(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"hello world", 2},
		{"你好", 2},
		{"order #123456", 3},
		{"Hi, there!", 4},
		{"退款 order 123", 4},
	}
	for _, tt := range tests {
		if got := llmCountTokens(tt.in); got != tt.want {
			t.Errorf("llmCountTokens(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func BenchmarkLLMSimChat(b *testing.B) {
	sim := New(Faults{})
	body := `{"model":"m","messages":[{"role":"system","content":"You are helpful."},` +
		`{"role":"user","content":"我的订单 123456789 什么时候发货？"}]}`
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
			rec := httptest.NewRecorder()
			sim.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("status %d", rec.Code)
			}
		}
	})
}

func TestLLMHonoursTheCompletionLimit(t *testing.T) {
	t.Parallel()
	b := llmSetup(t, Faults{}, nil)
	const question = "What time does the Double 11 sale start tonight, and which coupons can I stack?"

	full, err := b.client.Chat.Completions.New(t.Context(), llmUserParams(question))
	if err != nil {
		t.Fatal(err)
	}
	if full.Usage.CompletionTokens <= 5 || full.Choices[0].FinishReason != "stop" {
		t.Fatalf("unlimited answer %+v: want more than 5 tokens, finished", full.Usage)
	}

	for _, tc := range []struct {
		name string
		set  func(*openai.ChatCompletionNewParams)
	}{
		{"max_tokens", func(p *openai.ChatCompletionNewParams) { p.MaxTokens = openai.Int(5) }},
		{"max_completion_tokens", func(p *openai.ChatCompletionNewParams) { p.MaxCompletionTokens = openai.Int(5) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := llmUserParams(question)
			tc.set(&p)
			res, err := b.client.Chat.Completions.New(t.Context(), p)
			if err != nil {
				t.Fatal(err)
			}
			c := res.Choices[0]
			if res.Usage.CompletionTokens != 5 || c.FinishReason != "length" ||
				llmCountTokens(c.Message.Content) != 5 || !strings.HasPrefix(full.Choices[0].Message.Content, c.Message.Content) {
				t.Errorf("limited to 5: %q (finish %q, usage %+v), want the first 5 tokens of %q",
					c.Message.Content, c.FinishReason, res.Usage, full.Choices[0].Message.Content)
			}

			// Streamed, the same cut.
			var text strings.Builder
			finish := ""
			s := b.client.Chat.Completions.NewStreaming(t.Context(), p)
			for s.Next() {
				for _, ch := range s.Current().Choices {
					text.WriteString(ch.Delta.Content)
					finish = cmpOr(ch.FinishReason, finish)
				}
			}
			if err := s.Err(); err != nil || text.String() != c.Message.Content || finish != "length" {
				t.Errorf("stream: %q finish %q (%v), want %q and length", text.String(), finish, err, c.Message.Content)
			}
		})
	}
	if st := b.sim.Stats(); st.WithMaxTokens != 4 || st.Truncated != 4 || st.Requests != 5 {
		t.Errorf("stats %+v: want 5 requests, 4 with a limit, 4 truncated", st)
	}

	// Both at once is refused, as OpenAI does.
	res, body := llmPost(t, http.MethodPost, b.srv.URL+"/v1/chat/completions",
		`{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_completion_tokens":5}`)
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "at the same time") {
		t.Errorf("both limits: %d %s, want 400", res.StatusCode, body)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestLLMKeyErrorsRefuseOnlyThatKey(t *testing.T) {
	t.Parallel()
	b := llmSetup(t, Faults{KeyErrors: map[string]int{"sk-revoked": 401, "sk-busy": 429}}, nil)
	url := b.srv.URL + "/v1"
	for key, want := range map[string]int{"sk-revoked": 401, "sk-busy": 429, "sk-good": 200} {
		c := openai.NewClient(option.WithBaseURL(url), option.WithMaxRetries(0), option.WithAPIKey(key))
		_, err := c.Chat.Completions.New(t.Context(), llmUserParams("hello"))
		var apiErr *openai.Error
		switch {
		case want == 200 && err != nil:
			t.Errorf("%s: %v, want an answer", key, err)
		case want != 200 && (!errors.As(err, &apiErr) || apiErr.StatusCode != want):
			t.Errorf("%s: %v, want %d", key, err, want)
		case want == 429 && apiErr.Response.Header.Get("Retry-After") == "":
			t.Errorf("%s: 429 without Retry-After", key)
		}
	}
	st := b.sim.Stats()
	if len(st.ByKey) != 3 {
		t.Errorf("by key %v, want 3 fingerprints", st.ByKey)
	}
	for fp := range st.ByKey {
		if strings.Contains(fp, "sk-") {
			t.Errorf("stats show a key: %v", st.ByKey)
		}
	}
	// key_errors over the admin endpoint, replaced as a whole.
	res, body := llmPost(t, http.MethodPut, b.srv.URL+"/admin/faults", `{"key_errors":{"sk-good":403}}`)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("PUT: %d %s", res.StatusCode, body)
	}
	if f := b.sim.Faults(); len(f.KeyErrors) != 1 || f.KeyErrors["sk-good"] != 403 {
		t.Errorf("key errors after PUT: %v", f.KeyErrors)
	}
	if res, body := llmPost(t, http.MethodPut, b.srv.URL+"/admin/faults", `{"key_errors":{"k":200}}`); res.StatusCode != http.StatusBadRequest {
		t.Errorf("PUT a 200 key error: %d %s, want 400", res.StatusCode, body)
	}
}

func TestLLMTruncateTokens(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"您好，关于「双11」：我们已经收到", "About \"where is my parcel?\": thanks, we are", ""} {
		total := llmCountTokens(s)
		for n := 0; n <= total+1; n++ {
			got := llmTruncateTokens(s, n)
			if c := llmCountTokens(got); c != min(n, total) || !strings.HasPrefix(s, got) {
				t.Errorf("llmTruncateTokens(%q, %d) = %q with %d tokens", s, n, got, c)
			}
		}
	}
}
