package llmsim

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
)

// llmToolNames are the functions the simulator calls on cue; the position is the
// tool's counter slot and the llmTool* constants name the positions.
var llmToolNames = [...]string{"lookup_order", "issue_coupon", "request_refund", "handoff_to_human"}

const (
	llmToolLookupOrder = iota
	llmToolIssueCoupon
	llmToolRequestRefund
	llmToolHandoff
	llmNoTool = -1
)

// llmStatusClientGone is recorded when the client went away before an answer.
const llmStatusClientGone = 499

// llmCouponCents is the amount of every coupon the simulator hands out.
const llmCouponCents = 500

// Cue words, matched against the lower-cased last user message.
var (
	llmHandoffWords   = []string{"人工", "human agent", "real person", "a human", "human being", "live agent"}
	llmRefundWords    = []string{"refund", "退款", "退钱"}
	llmCouponWords    = []string{"coupon", "voucher", "优惠券", "代金券"}
	llmComplaintWords = []string{"late", "slow", "broken", "complain", "damaged", "delay", "投诉", "太慢", "迟", "坏", "破损"}
	llmOrderWords     = []string{"order", "订单", "快递", "package", "parcel", "物流", "shipment", "tracking", "发货"}

	// An order number is digits after '#' ("order #123"), or else any run of six or more digits.
	llmOrderHashRe   = regexp.MustCompile(`#\s*(\d{3,})`)
	llmOrderDigitsRe = regexp.MustCompile(`\d{6,}`)
)

// llmChatRequest is the part of a chat completion request the simulator reads.
type llmChatRequest struct {
	Model         string       `json:"model"`
	Messages      []llmMessage `json:"messages"`
	Stream        bool         `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Tools []struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	} `json:"tools"`
	// The completion limit: OpenAI takes one of the two, never both.
	MaxTokens           *int `json:"max_tokens"`
	MaxCompletionTokens *int `json:"max_completion_tokens"`
}

// limit returns the completion limit the request sets (0: none), or an error
// message when it sets it wrongly.
func (req *llmChatRequest) limit() (int, string) {
	switch {
	case req.MaxTokens != nil && req.MaxCompletionTokens != nil:
		return 0, "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported."
	case req.MaxTokens != nil && *req.MaxTokens < 1:
		return 0, "'max_tokens' must be at least 1."
	case req.MaxCompletionTokens != nil && *req.MaxCompletionTokens < 1:
		return 0, "'max_completion_tokens' must be at least 1."
	case req.MaxTokens != nil:
		return *req.MaxTokens, ""
	case req.MaxCompletionTokens != nil:
		return *req.MaxCompletionTokens, ""
	}
	return 0, ""
}

type llmMessage struct {
	Role string `json:"role"`
	// Content is a string, an array of content parts or null.
	Content   json.RawMessage   `json:"content"`
	Name      string            `json:"name"`
	ToolCalls []llmToolCallJSON `json:"tool_calls"`
}

// text returns the message's text; content parts are joined.
func (m llmMessage) text() string {
	c := bytes.TrimSpace(m.Content)
	if len(c) == 0 {
		return ""
	}
	switch c[0] {
	case '"':
		var s string
		if json.Unmarshal(c, &s) == nil {
			return s
		}
	case '[':
		var parts []struct {
			Text string `json:"text"`
		}
		if json.Unmarshal(c, &parts) == nil {
			var b strings.Builder
			for _, p := range parts {
				b.WriteString(p.Text)
			}
			return b.String()
		}
	}
	return ""
}

func (req *llmChatRequest) offers(tool string) bool {
	for _, t := range req.Tools {
		if t.Function.Name == tool && (t.Type == "" || t.Type == "function") {
			return true
		}
	}
	return false
}

// llmReply is the simulator's deterministic answer to a request.
type llmReply struct {
	content          string // empty when the answer is a tool call
	tool             int    // index into llmToolNames, or llmNoTool
	toolArgs         string
	promptTokens     int
	completionTokens int
	// truncated: the answer was cut at the request's completion limit.
	truncated bool
}

// llmBuildReply decides the answer: a tool call on cue when the last message is
// the user's, otherwise text quoting the last user message (and the tool results
// when the last messages are tool results).
func llmBuildReply(req *llmChatRequest) llmReply {
	reply := llmReply{tool: llmNoTool, promptTokens: 3}
	texts := make([]string, len(req.Messages))
	lastUser := ""
	for i, m := range req.Messages {
		texts[i] = m.text()
		if m.Role == "user" {
			lastUser = texts[i]
		}
		reply.promptTokens += 4 + llmCountTokens(texts[i]) + llmCountTokens(m.Name)
		for _, tc := range m.ToolCalls {
			reply.promptTokens += 3 + llmCountTokens(tc.Function.Name) + llmCountTokens(tc.Function.Arguments)
		}
	}
	for _, t := range req.Tools {
		reply.promptTokens += 8 + llmCountTokens(t.Function.Name)
	}

	last := len(req.Messages) - 1
	if req.Messages[last].Role == "user" {
		if tool, args, ok := llmPickTool(lastUser, req.offers); ok {
			reply.tool, reply.toolArgs = tool, args
			reply.completionTokens = 4 + llmCountTokens(llmToolNames[tool]) + llmCountTokens(args)
			return reply
		}
	}
	// The trailing tool messages are the results the answer reports.
	first := len(req.Messages)
	for first > 0 && req.Messages[first-1].Role == "tool" {
		first--
	}
	reply.content = llmAnswer(lastUser, texts[first:])
	reply.completionTokens = max(llmCountTokens(reply.content), 1)
	return reply
}

// cut shortens the answer to limit completion tokens (0: no limit), as a
// provider stops writing at max_tokens: text ends mid-way, a tool call's
// arguments end mid-way (no longer valid JSON).
func (reply *llmReply) cut(limit int) {
	if limit <= 0 || reply.completionTokens <= limit {
		return
	}
	reply.truncated = true
	reply.completionTokens = limit
	if reply.tool != llmNoTool {
		reply.toolArgs = llmTruncateTokens(reply.toolArgs, max(limit-4-llmCountTokens(llmToolNames[reply.tool]), 0))
		return
	}
	reply.content = llmTruncateTokens(reply.content, limit)
}

// llmAnswer quotes the user's text verbatim, in Chinese when it has CJK text.
func llmAnswer(user string, toolResults []string) string {
	zh := llmHasCJK(user)
	switch {
	case zh && len(toolResults) > 0:
		return "您好，关于「" + user + "」：查询结果：" + strings.Join(toolResults, "；") + "。请问还有其他可以帮您的吗？"
	case zh:
		return "您好，关于「" + user + "」：我们已经收到您的问题，正在为您处理，请稍候。"
	case len(toolResults) > 0:
		return `About "` + user + `": here is what I found: ` + strings.Join(toolResults, "; ") +
			". Is there anything else I can help you with?"
	default:
		return `About "` + user + `": thanks for reaching out, we are looking into it and will get back to you shortly.`
	}
}

type llmRefundArgs struct {
	OrderID string `json:"order_id"`
	Reason  string `json:"reason"`
}

type llmCouponArgs struct {
	OrderID     string `json:"order_id,omitempty"`
	AmountCents int    `json:"amount_cents"`
	Reason      string `json:"reason"`
}

type llmLookupArgs struct {
	OrderID string `json:"order_id"`
}

type llmHandoffArgs struct {
	Reason string `json:"reason"`
}

// llmPickTool returns the first offered tool the text cues, with its JSON
// arguments. An explicit wish for a person wins over everything else.
func llmPickTool(text string, offered func(string) bool) (int, string, bool) {
	lower := strings.ToLower(text)
	order := llmOrderNumber(text)
	reason := llmTruncate(text, 200)
	var (
		tool = llmNoTool
		args any
	)
	switch {
	case offered(llmToolNames[llmToolHandoff]) && llmContainsAny(lower, llmHandoffWords):
		tool, args = llmToolHandoff, llmHandoffArgs{Reason: reason}
	case offered(llmToolNames[llmToolRequestRefund]) && order != "" && llmContainsAny(lower, llmRefundWords):
		tool, args = llmToolRequestRefund, llmRefundArgs{OrderID: order, Reason: reason}
	case offered(llmToolNames[llmToolIssueCoupon]) && llmContainsAny(lower, llmCouponWords) &&
		llmContainsAny(lower, llmComplaintWords):
		tool, args = llmToolIssueCoupon, llmCouponArgs{OrderID: order, AmountCents: llmCouponCents, Reason: reason}
	case offered(llmToolNames[llmToolLookupOrder]) && order != "" && llmContainsAny(lower, llmOrderWords):
		tool, args = llmToolLookupOrder, llmLookupArgs{OrderID: order}
	default:
		return llmNoTool, "", false
	}
	b, err := json.Marshal(args)
	if err != nil {
		return llmNoTool, "", false
	}
	return tool, string(b), true
}

func llmOrderNumber(text string) string {
	if m := llmOrderHashRe.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return llmOrderDigitsRe.FindString(text)
}

func llmContainsAny(s string, words []string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

func llmTruncate(s string, runes int) string {
	i := 0
	for pos := range s {
		if i == runes {
			return s[:pos]
		}
		i++
	}
	return s
}

func llmIsCJK(r rune) bool {
	return unicode.In(r, unicode.Han, unicode.Hiragana, unicode.Katakana, unicode.Hangul)
}

func llmHasCJK(s string) bool {
	for _, r := range s {
		if llmIsCJK(r) {
			return true
		}
	}
	return false
}

// llmCountTokens estimates tokens deterministically: one per CJK character, one
// per run of letters and digits, one per other non-space character.
func llmCountTokens(s string) int {
	n := 0
	inWord := false
	for _, r := range s {
		switch {
		case llmIsCJK(r):
			n++
			inWord = false
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_':
			if !inWord {
				n++
			}
			inWord = true
		case unicode.IsSpace(r):
			inWord = false
		default:
			n++
			inWord = false
		}
	}
	return n
}

// llmTruncateTokens returns the longest start of s that llmCountTokens counts
// as at most n tokens.
func llmTruncateTokens(s string, n int) string {
	count := 0
	inWord := false
	for pos, r := range s {
		starts := false
		switch {
		case llmIsCJK(r):
			starts, inWord = true, false
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_':
			starts, inWord = !inWord, true
		case unicode.IsSpace(r):
			inWord = false
		default:
			starts, inWord = true, false
		}
		if starts {
			if count == n {
				return s[:pos]
			}
			count++
		}
	}
	return s
}

// llmSplit cuts s into at most n non-empty pieces of about equal rune count,
// never inside a rune.
func llmSplit(s string, n int) []string {
	total := utf8.RuneCountInString(s)
	if total == 0 {
		return []string{""}
	}
	size := (total + n - 1) / n
	pieces := make([]string, 0, n)
	count, start := 0, 0
	for pos := range s {
		if count > 0 && count%size == 0 {
			pieces = append(pieces, s[start:pos])
			start = pos
		}
		count++
	}
	return append(pieces, s[start:])
}

// Wire types of chat completion responses.
type (
	llmCompletion struct {
		ID                string      `json:"id"`
		Object            string      `json:"object"`
		Created           int64       `json:"created"`
		Model             string      `json:"model"`
		SystemFingerprint string      `json:"system_fingerprint"`
		Choices           []llmChoice `json:"choices"`
		Usage             llmUsage    `json:"usage"`
	}
	llmChoice struct {
		Index        int               `json:"index"`
		Message      llmAssistantReply `json:"message"`
		FinishReason string            `json:"finish_reason"`
		Logprobs     *struct{}         `json:"logprobs"`
	}
	llmAssistantReply struct {
		Role      string            `json:"role"`
		Content   *string           `json:"content"`
		Refusal   *string           `json:"refusal"`
		ToolCalls []llmToolCallJSON `json:"tool_calls,omitempty"`
	}
	llmToolCallJSON struct {
		Index    *int            `json:"index,omitempty"` // only in stream deltas
		ID       string          `json:"id,omitempty"`
		Type     string          `json:"type,omitempty"`
		Function llmFunctionJSON `json:"function"`
	}
	llmFunctionJSON struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	}
	llmUsage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	}
	llmChunk struct {
		ID                string           `json:"id"`
		Object            string           `json:"object"`
		Created           int64            `json:"created"`
		Model             string           `json:"model"`
		SystemFingerprint string           `json:"system_fingerprint"`
		Choices           []llmChunkChoice `json:"choices"`
		Usage             *llmUsage        `json:"usage,omitempty"`
	}
	llmChunkChoice struct {
		Index        int      `json:"index"`
		Delta        llmDelta `json:"delta"`
		FinishReason *string  `json:"finish_reason"`
	}
	llmDelta struct {
		Role      string            `json:"role,omitempty"`
		Content   *string           `json:"content,omitempty"`
		ToolCalls []llmToolCallJSON `json:"tool_calls,omitempty"`
	}
)

const llmFingerprint = "fp_llmsim"

// llmRolls are one request's draws from the random source, taken under one lock.
type llmRolls struct {
	jitter, slow, err, status, cut, cutAt float64
}

func (s *Sim) roll() llmRolls {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return llmRolls{
		jitter: s.rng.Float64(), slow: s.rng.Float64(), err: s.rng.Float64(),
		status: s.rng.Float64(), cut: s.rng.Float64(), cutAt: s.rng.Float64(),
	}
}

// delay is the wait before the answer: Latency (or Slow in the slow tail) ± jitter.
func (f *Faults) delay(r llmRolls) time.Duration {
	d := f.Latency
	if r.slow < f.SlowRate {
		d = f.Slow
	}
	if f.LatencyJitter > 0 {
		d += time.Duration((2*r.jitter - 1) * float64(f.LatencyJitter))
	}
	return max(d, 0)
}

// llmSetRetryAfter announces a wait in whole seconds (rounded up) and in milliseconds.
func llmSetRetryAfter(h http.Header, d time.Duration) {
	ms := max((d+time.Millisecond-1)/time.Millisecond, 1)
	secs := max((d+time.Second-1)/time.Second, 1)
	h.Set("Retry-After", strconv.FormatInt(int64(secs), 10))
	h.Set("Retry-After-Ms", strconv.FormatInt(int64(ms), 10))
}

// llmErrorKind gives an injected error status its OpenAI-style type, code and message.
func llmErrorKind(status int) (typ, code, msg string) {
	switch {
	case status == http.StatusTooManyRequests:
		return "requests", "rate_limit_exceeded", "Rate limit reached (simulated). Please try again later."
	case status == 529:
		return "overloaded_error", "overloaded", "The model is overloaded (simulated). Please try again later."
	case status == http.StatusServiceUnavailable:
		return "server_error", "service_unavailable", "The server is overloaded or not ready yet (simulated)."
	case status == http.StatusGatewayTimeout || status == http.StatusRequestTimeout:
		return "timeout", "timeout", "Request timed out (simulated)."
	case status >= 500:
		return "server_error", "server_error", "The server had an error while processing your request (simulated)."
	case status == http.StatusUnauthorized:
		return "authentication_error", "invalid_api_key", "Incorrect API key provided (simulated)."
	case status == http.StatusForbidden:
		return "permission_error", "permission_denied", "You are not allowed to use this model (simulated)."
	case status == http.StatusNotFound:
		return "not_found_error", "model_not_found", "The model does not exist (simulated)."
	default:
		return "invalid_request_error", "invalid_request_error", "Invalid request (simulated)."
	}
}

// handleChat serves POST /v1/chat/completions. The faults are applied in the
// order a real provider would meet them: outage and quota before reading the
// request, rate limits on admission, then the wait, then random errors.
func (s *Sim) handleChat(w http.ResponseWriter, r *http.Request) {
	// The request is recorded as finished before the last bytes of its answer
	// are written, so a client holding an answer also finds it in Stats. The
	// deferred call covers the ways out that write nothing more (client gone,
	// broken stream); status says how those are recorded.
	s.stats.enter()
	status := llmStatusClientGone
	finished := false
	finish := func(st int) {
		if !finished {
			finished = true
			s.stats.leave(st)
		}
	}
	defer func() { finish(status) }()

	cfg := s.cfg.Load()
	f := &cfg.faults
	fail := func(st int, typ, code, msg string) {
		finish(st)
		llmWriteError(w, st, typ, code, msg)
	}

	key, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.stats.countKey(key)
	if f.Outage {
		fail(http.StatusServiceUnavailable, "server_error", "service_unavailable", "The service is unavailable (simulated outage).")
		return
	}
	if f.InsufficientQuota {
		fail(http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota",
			"You exceeded your current quota, please check your plan and billing details (simulated).")
		return
	}
	if st, ok := f.KeyErrors[key]; ok {
		if st == http.StatusTooManyRequests {
			llmSetRetryAfter(w.Header(), f.RetryAfter)
		}
		typ, code, msg := llmErrorKind(st)
		fail(st, typ, code, msg)
		return
	}

	var req llmChatRequest
	body, err := llmReadBody(w, r)
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		fail(http.StatusBadRequest, "invalid_request_error", "invalid_json", "We could not parse the JSON body of your request: "+err.Error())
		return
	}
	if len(req.Messages) == 0 {
		fail(http.StatusBadRequest, "invalid_request_error", "invalid_value", "'messages' must not be empty.")
		return
	}
	limit, bad := req.limit()
	if bad != "" {
		fail(http.StatusBadRequest, "invalid_request_error", "invalid_parameter_combination", bad)
		return
	}
	if limit > 0 {
		s.stats.withMaxTokens.Add(1)
	}
	reply := llmBuildReply(&req)
	reply.cut(limit)

	if wait, err := s.admit(reply.promptTokens + reply.completionTokens); err != nil {
		typ, limit := "requests", f.RPM
		if errors.Is(err, llmErrTokenLimit) {
			typ, limit = "tokens", f.TPM
		}
		llmSetRetryAfter(w.Header(), wait)
		fail(http.StatusTooManyRequests, typ, "rate_limit_exceeded",
			"Rate limit reached for "+err.Error()+" (simulated): limit "+strconv.Itoa(limit)+
				". Please try again in "+wait.Round(time.Millisecond).String()+".")
		return
	}

	rolls := s.roll()
	ctx := r.Context()
	if f.Hang {
		if peakdesk.Sleep(ctx, f.HangMax) == nil {
			fail(http.StatusGatewayTimeout, "timeout", "timeout", "Request timed out (simulated hang).")
		}
		return
	}
	if peakdesk.Sleep(ctx, f.delay(rolls)) != nil {
		return
	}
	if rolls.err < f.ErrorRate {
		st := cfg.errorStatus(rolls.status)
		if st == http.StatusTooManyRequests {
			llmSetRetryAfter(w.Header(), f.RetryAfter)
		}
		typ, code, msg := llmErrorKind(st)
		fail(st, typ, code, msg)
		return
	}

	id := "chatcmpl-llmsim-" + strconv.FormatUint(s.seq.Add(1), 10)
	w.Header().Set("X-Request-Id", id)
	model := cmp.Or(req.Model, f.Model)
	created := time.Now().Unix()
	usage := llmUsage{
		PromptTokens:     reply.promptTokens,
		CompletionTokens: reply.completionTokens,
		TotalTokens:      reply.promptTokens + reply.completionTokens,
	}

	served := func() {
		s.stats.promptTokens.Add(int64(usage.PromptTokens))
		s.stats.completionTokens.Add(int64(usage.CompletionTokens))
		if reply.truncated {
			s.stats.truncated.Add(1)
		}
		if reply.tool != llmNoTool {
			s.stats.toolCalls[reply.tool].Add(1)
		}
		finish(http.StatusOK)
	}

	if req.Stream {
		// Once the stream has started, its status is 200 whatever happens next.
		status = http.StatusOK
		includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		head := llmChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model,
			SystemFingerprint: llmFingerprint}
		s.stream(ctx, w, f, rolls, head, reply, usage, includeUsage, served, func() {
			s.stats.streamsCut.Add(1)
			finish(http.StatusOK)
		})
		return
	}
	msg := llmAssistantReply{Role: "assistant"}
	finishReason := "stop"
	if reply.tool != llmNoTool {
		finishReason = "tool_calls"
		msg.ToolCalls = []llmToolCallJSON{{ID: llmCallID(id), Type: "function",
			Function: llmFunctionJSON{Name: llmToolNames[reply.tool], Arguments: reply.toolArgs}}}
	} else {
		msg.Content = &reply.content
	}
	if reply.truncated {
		finishReason = "length"
	}
	served()
	llmWriteJSON(w, http.StatusOK, llmCompletion{
		ID: id, Object: "chat.completion", Created: created, Model: model, SystemFingerprint: llmFingerprint,
		Choices: []llmChoice{{Message: msg, FinishReason: finishReason}},
		Usage:   usage,
	})
}

func llmReadBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	var buf bytes.Buffer
	if r.ContentLength > 0 && r.ContentLength < llmMaxBodyBytes {
		buf.Grow(int(r.ContentLength))
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, llmMaxBodyBytes))
	return buf.Bytes(), err
}

func llmCallID(completionID string) string {
	return "call_" + strings.TrimPrefix(completionID, "chatcmpl-")
}

// stream writes the answer as server-sent events; served is called just before
// [DONE]. A stream picked for cutting is aborted after at least one delta and
// before [DONE] (cut is called first) by panicking with http.ErrAbortHandler,
// which net/http turns into a broken connection.
func (s *Sim) stream(ctx context.Context, w http.ResponseWriter, f *Faults, rolls llmRolls,
	head llmChunk, reply llmReply, usage llmUsage, includeUsage bool, served, cut func()) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	s.stats.streams.Add(1)

	// The deltas: text in up to eight pieces, or a tool call header then its arguments.
	var deltas []llmDelta
	finish := "stop"
	if reply.tool != llmNoTool {
		finish = "tool_calls"
		zero := 0
		deltas = append(deltas, llmDelta{Role: "assistant", ToolCalls: []llmToolCallJSON{{Index: &zero,
			ID: llmCallID(head.ID), Type: "function", Function: llmFunctionJSON{Name: llmToolNames[reply.tool]}}}})
		for _, piece := range llmSplit(reply.toolArgs, 3) {
			deltas = append(deltas, llmDelta{ToolCalls: []llmToolCallJSON{{Index: &zero,
				Function: llmFunctionJSON{Arguments: piece}}}})
		}
	} else {
		for i, piece := range llmSplit(reply.content, 8) {
			d := llmDelta{Content: &piece}
			if i == 0 {
				d.Role = "assistant"
			}
			deltas = append(deltas, d)
		}
	}
	if reply.truncated {
		finish = "length"
	}
	cutAfter := 0
	if rolls.cut < f.StreamCutRate {
		cutAfter = min(1+int(rolls.cutAt*float64(len(deltas))), len(deltas))
	}

	var buf bytes.Buffer
	send := func(v any) bool {
		buf.Reset()
		buf.WriteString("data: ")
		if v == nil {
			buf.WriteString("[DONE]")
		} else {
			b, err := llmMarshal(v)
			if err != nil {
				return false
			}
			buf.Write(b)
		}
		buf.WriteString("\n\n")
		if _, err := w.Write(buf.Bytes()); err != nil {
			return false
		}
		return rc.Flush() == nil
	}

	for i, d := range deltas {
		if i > 0 && peakdesk.Sleep(ctx, f.ChunkDelay) != nil {
			return
		}
		chunk := head
		chunk.Choices = []llmChunkChoice{{Delta: d}}
		if !send(chunk) {
			return
		}
		if i+1 == cutAfter {
			cut()
			panic(http.ErrAbortHandler)
		}
	}
	chunk := head
	chunk.Choices = []llmChunkChoice{{Delta: llmDelta{}, FinishReason: &finish}}
	if !send(chunk) {
		return
	}
	if includeUsage {
		chunk := head
		chunk.Choices = []llmChunkChoice{}
		chunk.Usage = &usage
		if !send(chunk) {
			return
		}
	}
	served()
	send(nil)
}
