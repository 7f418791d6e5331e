package answer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// Order numbers as the simulated shop makes them: 16 digits that fail the
// Luhn check, so no bank card is seen in them.
const (
	orderA = "6222021234567890"
	orderB = "3810001234567895"
)

// shopTools are the outbox's tools as the worker offers them.
func shopTools() []llm.Tool {
	var tools []llm.Tool
	for _, d := range (&outbox.Tools{}).Definitions() {
		tools = append(tools, llm.Tool{Name: d.Name, Description: d.Description, Parameters: d.Parameters})
	}
	return tools
}

// toolBox is a test's CallTool: it records each call and answers as the
// shop's tools would, or with outcome when set.
type toolBox struct {
	outcome func(name string, args json.RawMessage) (answer.ToolOutcome, error)
	// onCall runs before the outcome (e.g. to let time pass).
	onCall func()

	mu    sync.Mutex
	calls []toolCall
}

type toolCall struct {
	name string
	args json.RawMessage
}

func (b *toolBox) call(_ context.Context, name string, args json.RawMessage) (answer.ToolOutcome, error) {
	b.mu.Lock()
	b.calls = append(b.calls, toolCall{name: name, args: args})
	b.mu.Unlock()
	if b.onCall != nil {
		b.onCall()
	}
	if b.outcome != nil {
		return b.outcome(name, args)
	}
	var a struct {
		OrderID string `json:"order_id"`
	}
	_ = json.Unmarshal(args, &a)
	switch name {
	case outbox.ToolRequestRefund:
		return answer.ToolOutcome{Text: fmt.Sprintf("A refund of CNY 99.00 for order %s has been requested", a.OrderID)}, nil
	case outbox.ToolLookupOrder:
		return answer.ToolOutcome{Text: fmt.Sprintf("Order %s: shipped, parcel SF1000 in transit", a.OrderID)}, nil
	case outbox.ToolHandoff:
		return answer.ToolOutcome{Text: "The conversation is handed to a human agent", Handoff: true}, nil
	}
	return answer.ToolOutcome{Text: "Refused: no such tool"}, nil
}

func (b *toolBox) all() []toolCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func (b *toolBox) orderIDs() []string {
	var ids []string
	for _, c := range b.all() {
		var a struct {
			OrderID string `json:"order_id"`
		}
		_ = json.Unmarshal(c.args, &a)
		ids = append(ids, a.OrderID)
	}
	return ids
}

// withTools offers the shop's tools to req, run by box.
func withTools(req answer.Request, box *toolBox) answer.Request {
	req.Tools = shopTools()
	req.CallTool = box.call
	return req
}

// toolCallsMetric reads peakdesk_llm_tool_calls_total{tool} from reg.
func toolCallsMetric(t *testing.T, reg *prometheus.Registry, tool string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "peakdesk_llm_tool_calls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tool" && l.GetValue() == tool {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestRefundToolCallAnswersWithItsResult(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) { c.Registerer = reg })
	box := &toolBox{}
	q := "我要退款，订单 " + orderA + " 的东西坏了，联系我 13812345678"
	ans := mustAnswer(t, a, withTools(request(b.clock, q), box))

	if ans.Source != peakdesk.SourceLLM || ans.Model != "primary" || ans.Handoff || ans.StreamBroken {
		t.Fatalf("answer %+v, want the primary model's", ans)
	}
	calls := box.all()
	if len(calls) != 1 || calls[0].name != outbox.ToolRequestRefund {
		t.Fatalf("tool calls %+v, want one request_refund", calls)
	}
	if ids := box.orderIDs(); ids[0] != orderA {
		t.Errorf("order id %q reached the tool, want %s", ids[0], orderA)
	}
	if !slices.Equal(ans.ToolCalls, []string{outbox.ToolRequestRefund}) {
		t.Errorf("ToolCalls %v", ans.ToolCalls)
	}
	// The final answer quotes the question (masked) and reports the result.
	for _, want := range []string{"我要退款，订单 " + orderA, "138****5678",
		"A refund of CNY 99.00 for order " + orderA + " has been requested"} {
		if !strings.Contains(ans.Text, want) {
			t.Errorf("answer %q lacks %q", ans.Text, want)
		}
	}
	if strings.Contains(b.bodies.all(), "13812345678") || ans.Masked[pii.Phone] != 1 {
		t.Errorf("the phone number reached the LLM or was not counted (masked %v)", ans.Masked)
	}
	// Two calls, both accounted.
	st := b.sim.Stats()
	if st.Requests != 2 || st.ToolCalls[outbox.ToolRequestRefund] != 1 {
		t.Errorf("simulator stats %+v, want 2 requests, 1 tool call", st)
	}
	if int64(ans.PromptTokens) != st.PromptTokens || int64(ans.CompletionTokens) != st.CompletionTokens {
		t.Errorf("tokens %d/%d, provider counted %d/%d", ans.PromptTokens, ans.CompletionTokens, st.PromptTokens, st.CompletionTokens)
	}
	if want := int64(2*ans.PromptTokens + 8*ans.CompletionTokens); ans.CostMicroUSD != want {
		t.Errorf("cost %d µ$, want %d", ans.CostMicroUSD, want)
	}
	if got := toolCallsMetric(t, reg, outbox.ToolRequestRefund); got != 1 {
		t.Errorf("peakdesk_llm_tool_calls_total{tool=request_refund} = %v, want 1", got)
	}
}

func TestMaskingKeepsTheOrderNumbersToolsNeed(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, nil)
	for _, tc := range []struct {
		name, question string
		want           string // order id CallTool gets; "" = no tool call
	}{
		{"shop order number", "退款 " + orderB + " 谢谢", orderB},
		{"card-like but not Luhn", "我要退款 " + orderA, orderA},
		// Luhn-valid, but right after an order word: an order number.
		{"after an order word", "订单号 6222021234567894 我要退款", "6222021234567894"},
		// A real card number is masked: it never reaches the model nor a tool.
		{"bank card", "我要退款 6222021234567894", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			box := &toolBox{}
			ans := mustAnswer(t, a, withTools(request(b.clock, tc.question), box))
			ids := box.orderIDs()
			switch {
			case tc.want == "" && len(ids) != 0:
				t.Errorf("tool got order ids %v from a masked card number", ids)
			case tc.want == "" && ans.Masked[pii.BankCard] != 1:
				t.Errorf("masked %v, want the bank card", ans.Masked)
			case tc.want != "" && !slices.Equal(ids, []string{tc.want}):
				t.Errorf("tool got order ids %v, want [%s]", ids, tc.want)
			case tc.want != "" && len(ans.Masked) != 0:
				t.Errorf("masked %v in a question with an order number only", ans.Masked)
			}
		})
	}
}

func TestLookupOrderStreamsTheFinalAnswer(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{ChunkDelay: time.Millisecond}, nil)
	box := &toolBox{}
	var got strings.Builder
	n := 0
	req := withTools(request(b.clock, "我的快递到哪了？订单 "+orderA), box)
	req.OnDelta = func(s string) { got.WriteString(s); n++ }
	ans := mustAnswer(t, a, req)

	if ans.Source != peakdesk.SourceLLM || ans.StreamBroken {
		t.Fatalf("answer %+v", ans)
	}
	if ids := box.orderIDs(); len(ids) != 1 || box.all()[0].name != outbox.ToolLookupOrder || ids[0] != orderA {
		t.Fatalf("tool calls %+v, want lookup_order of %s", box.all(), orderA)
	}
	// Only text reaches OnDelta: the tool call's pieces do not.
	if n < 2 || got.String() != ans.Text {
		t.Errorf("%d deltas %q, answer %q", n, got.String(), ans.Text)
	}
	if !strings.Contains(ans.Text, "Order "+orderA+": shipped, parcel SF1000 in transit") {
		t.Errorf("answer %q lacks the lookup result", ans.Text)
	}
	if st := b.sim.Stats(); st.Streams != 2 || st.ToolCalls[outbox.ToolLookupOrder] != 1 {
		t.Errorf("stats %+v: want both rounds streamed", st)
	}
	if ans.PromptTokens == 0 || ans.CompletionTokens == 0 {
		t.Errorf("streamed rounds have no usage: %+v", ans)
	}
}

func TestHandoffToolMarksTheConversation(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, nil)
	box := &toolBox{}
	ans := mustAnswer(t, a, withTools(request(b.clock, "我要转人工客服"), box))
	if !ans.Handoff || ans.Source != peakdesk.SourceLLM || !slices.Equal(ans.ToolCalls, []string{outbox.ToolHandoff}) {
		t.Fatalf("answer %+v, want the LLM's answer with Handoff after handoff_to_human", ans)
	}
	if !strings.Contains(ans.Text, "handed to a human agent") {
		t.Errorf("answer %q does not report the handoff", ans.Text)
	}
}

func TestToolErrorIsTextForTheModel(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, nil)
	box := &toolBox{outcome: func(string, json.RawMessage) (answer.ToolOutcome, error) {
		return answer.ToolOutcome{}, errors.New("storage: connection refused to 10.0.0.7:5432")
	}}
	ans := mustAnswer(t, a, withTools(request(b.clock, "refund order "+orderA+" please"), box))
	if ans.Source != peakdesk.SourceLLM || ans.Handoff || len(box.all()) != 1 {
		t.Fatalf("answer %+v after %d tool calls, want the LLM's answer", ans, len(box.all()))
	}
	if !strings.Contains(ans.Text, "technical problem") {
		t.Errorf("answer %q does not tell the tool failed", ans.Text)
	}
	if strings.Contains(b.bodies.all(), "10.0.0.7") {
		t.Error("the tool's internal error reached the LLM")
	}
}

// forgetful hands each request on without the messages after the last
// user message: the model never sees its tool results and asks again, like
// a model stuck in a loop.
type forgetful struct{ next http.Handler }

func (f forgetful) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data, _ := io.ReadAll(r.Body)
	var req map[string]any
	if err := json.Unmarshal(data, &req); err == nil {
		msgs, _ := req["messages"].([]any)
		last := len(msgs) - 1
		for last > 0 {
			if m, _ := msgs[last].(map[string]any); m["role"] == "user" {
				break
			}
			last--
		}
		req["messages"] = msgs[:last+1]
		data, _ = json.Marshal(req)
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	r.ContentLength = int64(len(data))
	f.next.ServeHTTP(w, r)
}

func TestToolRoundsAreCapped(t *testing.T) {
	t.Parallel()
	sim := llmsim.New(llmsim.Faults{})
	sent := &bodies{next: forgetful{sim}}
	srv := httptest.NewServer(sent)
	t.Cleanup(srv.Close)
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) { c.Provider.BaseURL = srv.URL + "/v1" })
	box := &toolBox{}
	ans := mustAnswer(t, a, withTools(request(b.clock, "我要退款 "+orderA), box))

	if got := len(box.all()); got != answer.MaxToolRounds {
		t.Errorf("%d tool calls, want %d rounds of one", got, answer.MaxToolRounds)
	}
	// Three rounds on the primary, its last call asking for text; then the
	// secondary goes on from there, asked for text at once. Both disobey.
	if st := sim.Stats(); st.Requests != answer.MaxToolRounds+2 {
		t.Errorf("%d LLM calls, want %d", st.Requests, answer.MaxToolRounds+2)
	}
	sent.mu.Lock()
	for i, body := range sent.seen {
		none := strings.Contains(body, `"tool_choice":"none"`)
		if none != (i >= answer.MaxToolRounds) {
			t.Errorf("call %d: tool_choice none = %v", i+1, none)
		}
		if i == answer.MaxToolRounds+1 && strings.Count(body, `"role":"tool"`) != answer.MaxToolRounds {
			t.Errorf("the secondary did not get the conversation so far: %s", body)
		}
	}
	sent.mu.Unlock()
	// Tools ran, no model answered: a human follows up.
	if ans.Source != peakdesk.SourceHandoff || !ans.Handoff || len(ans.ToolCalls) != answer.MaxToolRounds {
		t.Errorf("answer %+v, want a handoff after %d tool calls", ans, answer.MaxToolRounds)
	}
	if ans.PromptTokens == 0 || ans.CostMicroUSD == 0 {
		t.Errorf("the rounds' tokens are not accounted: %+v", ans)
	}
}

func TestToolsWithTheLLMDownFallBackWithoutCallingThem(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{Outage: true}, nil)
	box := &toolBox{}
	ans := mustAnswer(t, a, withTools(request(b.clock, "双11满减活动怎么算？"), box))
	if ans.Source != peakdesk.SourceFAQ || !strings.Contains(ans.Text, "每满300减50") {
		t.Errorf("answer %+v, want the FAQ", ans)
	}
	ans = mustAnswer(t, a, withTools(request(b.clock, "我要退款 "+orderA+"，为什么还没处理"), box))
	if ans.Source != peakdesk.SourceFAQ && ans.Source != peakdesk.SourceHandoff {
		t.Errorf("answer %+v, want the FAQ or a handoff", ans)
	}
	if calls := box.all(); len(calls) != 0 || len(ans.ToolCalls) != 0 {
		t.Errorf("tools called %+v with the LLM down", calls)
	}
	if got := b.sim.Stats().Requests; got != 6 {
		t.Errorf("%d LLM calls, want 6 (3 per model, then both breakers open)", got)
	}
}

// afterTools sends the requests of the models in failing that carry tool
// results to down, and everything else to up: the LLM fails after a tool ran.
func afterTools(up, down *llmsim.Sim, failing ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(data))
		var req struct {
			Model    string `json:"model"`
			Messages []struct {
				Role string `json:"role"`
			} `json:"messages"`
		}
		_ = json.Unmarshal(data, &req)
		for _, m := range req.Messages {
			if m.Role == "tool" && slices.Contains(failing, req.Model) {
				down.ServeHTTP(w, r)
				return
			}
		}
		up.ServeHTTP(w, r)
	})
}

func TestLLMFailingAfterAToolRan(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		failing []string
		source  string
	}{
		// The secondary takes over the conversation: the tool does not run again.
		{"secondary continues", []string{"primary"}, peakdesk.SourceLLMSecondary},
		// The tool's effects stand (the caller keeps its actions): a human follows up.
		{"handoff", []string{"primary", "secondary"}, peakdesk.SourceHandoff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up, down := llmsim.New(llmsim.Faults{}), llmsim.New(llmsim.Faults{Outage: true})
			srv := httptest.NewServer(afterTools(up, down, tc.failing...))
			t.Cleanup(srv.Close)
			a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) { c.Provider.BaseURL = srv.URL + "/v1" })
			box := &toolBox{}
			ans := mustAnswer(t, a, withTools(request(b.clock, "退款多久能到账？我要退款 "+orderA), box))
			if len(box.all()) != 1 || !slices.Equal(ans.ToolCalls, []string{outbox.ToolRequestRefund}) {
				t.Errorf("tool calls %+v, answer's %v: want request_refund once", box.all(), ans.ToolCalls)
			}
			if ans.Source != tc.source || ans.Handoff != (tc.source == peakdesk.SourceHandoff) {
				t.Fatalf("answer %+v, want source %s", ans, tc.source)
			}
			if tc.source == peakdesk.SourceLLMSecondary && !strings.Contains(ans.Text, "has been requested") {
				t.Errorf("the secondary's answer %q lacks the tool result", ans.Text)
			}
			if ans.PromptTokens == 0 {
				t.Errorf("the first round's tokens are not accounted: %+v", ans)
			}
		})
	}
}

func TestToolRoundsStopAtTheDeadline(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, nil)
	// The tool takes longer than the answer may.
	box := &toolBox{onCall: func() { b.clock.Advance(time.Minute) }}
	ans := mustAnswer(t, a, withTools(request(b.clock, "我要退款 "+orderA), box))
	if ans.Source != peakdesk.SourceHandoff || len(box.all()) != 1 {
		t.Errorf("answer %+v, %d tool calls: want a handoff after the one tool call", ans, len(box.all()))
	}
	if got := b.sim.Stats().Requests; got != 1 {
		t.Errorf("%d LLM calls, want 1: no round after the deadline", got)
	}
}

func TestToolRequestsAreNotCoalesced(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{Latency: 50 * time.Millisecond}, nil)
	// A general complaint: coalesced without tools, not with them.
	q := "快递太慢了，我要投诉，给个优惠券吧"
	if _, ok := a.LeaderKey(request(b.clock, q)); !ok {
		t.Fatal("the question is not coalesced even without tools; the test proves nothing")
	}
	box := &toolBox{outcome: func(name string, _ json.RawMessage) (answer.ToolOutcome, error) {
		return answer.ToolOutcome{Text: "A coupon of CNY 5.00 will be issued"}, nil
	}}
	if _, ok := a.LeaderKey(withTools(request(b.clock, q), box)); ok {
		t.Fatal("a request with tools has a coalescing key")
	}
	for _, q := range []string{q, "我要退款 " + orderA} {
		b.sim.ResetStats()
		before := len(box.all())
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if ans := mustAnswer(t, a, withTools(request(b.clock, q), box)); ans.Source != peakdesk.SourceLLM {
					t.Errorf("%q: answer %+v, want its own LLM answer", q, ans)
				}
			})
		}
		wg.Wait()
		// And again later: no cache.
		if ans := mustAnswer(t, a, withTools(request(b.clock, q), box)); ans.Source != peakdesk.SourceLLM {
			t.Errorf("%q: answer %+v, want its own LLM answer", q, ans)
		}
		if st := b.sim.Stats(); st.Requests != 6 || len(box.all())-before != 3 {
			t.Errorf("%q: %d LLM calls and %d tool calls, want 6 and 3 (three tool loops)", q, st.Requests, len(box.all())-before)
		}
	}
}

func TestToolsNeedCallTool(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, nil)
	req := request(b.clock, "我要退款 "+orderA)
	req.Tools = shopTools()
	if ans, err := a.Answer(context.Background(), req); err == nil {
		t.Errorf("answered %+v with tools and no CallTool", ans)
	}
}
