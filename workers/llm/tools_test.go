package llm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/workers/llm"
)

var refundTool = llm.Tool{
	Name:        "request_refund",
	Description: "Request a refund of one of the customer's orders.",
	Parameters: json.RawMessage(`{"type":"object","properties":{"order_id":{"type":"string"},` +
		`"reason":{"type":"string"}},"required":["order_id","reason"]}`),
}

var lookupTool = llm.Tool{
	Name:        "lookup_order",
	Description: "Look up one of the customer's orders.",
	Parameters:  json.RawMessage(`{"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}`),
}

// recorder keeps the request bodies a provider receives.
type recorder struct {
	next http.Handler
	mu   sync.Mutex
	seen []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	data, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.seen = append(r.seen, string(data))
	r.mu.Unlock()
	req.Body = io.NopCloser(bytes.NewReader(data))
	r.next.ServeHTTP(w, req)
}

func (r *recorder) body(i int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.seen) {
		return ""
	}
	return r.seen[i]
}

func toolCounter(t *testing.T, reg *prometheus.Registry, tool string) prometheus.Collector {
	t.Helper()
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "peakdesk_llm_tool_calls_total",
		Help: `Tool calls the LLM asked for, by tool ("unknown" for a name that was not offered).`}, []string{"tool"})
	existing, err := llm.Register(reg, v)
	if err != nil {
		t.Fatal(err)
	}
	return existing.WithLabelValues(tool)
}

func TestToolCallRoundTrip(t *testing.T) {
	t.Parallel()
	for _, streaming := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "streaming"}[streaming]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, llmsim.Faults{}, nil)
			rec := &recorder{next: b.sim}
			srv := httptest.NewServer(rec)
			t.Cleanup(srv.Close)
			var deltas strings.Builder
			cl := call(b, "m1")
			cl.BaseURL = srv.URL + "/v1"
			cl.Tools = []llm.Tool{lookupTool, refundTool}
			question := "please refund order 6222021234567890, it arrived broken"
			cl.Turns = []llm.Turn{{Role: llm.RoleSystem, Text: "be brief"}, {Role: llm.RoleUser, Text: question}}
			if streaming {
				cl.OnDelta = func(s string) { deltas.WriteString(s) }
			}

			// 1. The model asks for the tool; no text, so nothing streams.
			comp, err := c.Do(context.Background(), cl)
			if err != nil {
				t.Fatal(err)
			}
			if comp.Text != "" || len(comp.ToolCalls) != 1 || deltas.Len() != 0 {
				t.Fatalf("completion %+v, deltas %q: want one tool call and no text", comp, deltas.String())
			}
			tc := comp.ToolCalls[0]
			var args struct {
				OrderID string `json:"order_id"`
			}
			if err := json.Unmarshal(tc.Args, &args); err != nil || tc.Name != "request_refund" || tc.ID == "" ||
				args.OrderID != "6222021234567890" {
				t.Fatalf("tool call %+v (%v), want request_refund of 6222021234567890 with an id", tc, err)
			}
			if comp.PromptTokens == 0 || comp.CompletionTokens == 0 {
				t.Errorf("no usage: %+v", comp)
			}
			sent := rec.body(0)
			for _, want := range []string{`"type":"function"`, `"name":"request_refund"`, `"order_id":{"type":"string"}`} {
				if !strings.Contains(sent, want) {
					t.Errorf("request lacks %s: %s", want, sent)
				}
			}
			if strings.Contains(sent, "tool_choice") {
				t.Errorf("tool_choice sent without NoToolCall: %s", sent)
			}

			// 2. The result goes back; the model answers in text, asked to.
			cl.Turns = append(cl.Turns,
				llm.Turn{Role: llm.RoleAssistant, ToolCalls: comp.ToolCalls},
				llm.Turn{Role: llm.RoleTool, ToolCallID: tc.ID, Text: "refund of CNY 99.00 requested"})
			cl.NoToolCall = true
			comp, err = c.Do(context.Background(), cl)
			if err != nil {
				t.Fatal(err)
			}
			if len(comp.ToolCalls) != 0 || !strings.Contains(comp.Text, question) ||
				!strings.Contains(comp.Text, "refund of CNY 99.00 requested") {
				t.Errorf("completion %+v, want text quoting the question and the result", comp)
			}
			if streaming && deltas.String() != comp.Text {
				t.Errorf("deltas %q, text %q", deltas.String(), comp.Text)
			}
			sent = rec.body(1)
			for _, want := range []string{`"tool_call_id":"` + tc.ID + `"`, `"tool_calls":[{"id":"` + tc.ID + `"`,
				`"tool_choice":"none"`} {
				if !strings.Contains(sent, want) {
					t.Errorf("second request lacks %s: %s", want, sent)
				}
			}
			if got := testutil.ToFloat64(toolCounter(t, b.reg, "request_refund")); got != 1 {
				t.Errorf("peakdesk_llm_tool_calls_total{tool=request_refund} = %v, want 1", got)
			}
		})
	}
}

func TestBadToolSchemaIsRejectedWithoutACall(t *testing.T) {
	t.Parallel()
	c, b := setup(t, llmsim.Faults{}, nil)
	cl := call(b, "m1")
	cl.Tools = []llm.Tool{{Name: "broken", Parameters: json.RawMessage(`{"type":`)}}
	if _, err := c.Do(context.Background(), cl); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("err = %v, want one naming the tool", err)
	}
	if got := b.sim.Stats().Requests; got != 0 {
		t.Errorf("provider saw %d calls", got)
	}
	if got := testutil.ToFloat64(counter(t, b.reg, "m1", llm.OutcomeRejected)); got != 1 || len(b.clock.Sleeps()) != 0 {
		t.Errorf("rejected = %v after %d waits, want 1 and none", got, len(b.clock.Sleeps()))
	}
}
