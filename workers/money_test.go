package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// scriptedCoupons is an OpenAI-compatible LLM that answers a question with
// three issue_coupon calls in one response, and the tool results with a
// text quoting them: what a persuaded model does.
func scriptedCoupons(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Messages []struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"messages"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	msg := map[string]any{"role": "assistant"}
	finish := "stop"
	if last := req.Messages[len(req.Messages)-1]; last.Role == "tool" {
		var results []string
		for _, m := range req.Messages {
			if m.Role == "tool" {
				results = append(results, m.Content)
			}
		}
		msg["content"] = "Done. " + strings.Join(results, " | ")
	} else {
		var calls []map[string]any
		for i, cents := range []int{300, 500, 900} {
			calls = append(calls, map[string]any{"id": fmt.Sprintf("call_%d", i), "type": "function",
				"function": map[string]any{"name": "issue_coupon",
					"arguments": fmt.Sprintf(`{"amount_cents":%d,"reason":"late parcel"}`, cents)}})
		}
		msg["content"], msg["tool_calls"], finish = nil, calls, "tool_calls"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"id": "chatcmpl-scripted", "object": "chat.completion", "created": time.Now().Unix(), "model": "sim",
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish}},
		"usage":   map[string]any{"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
	})
}

// A model persuaded to call issue_coupon three times in one response
// promises one coupon: the reply is stored with one coupon.issue action,
// and the model is told the other two were refused.
func TestThreeCouponCallsInOneResponsePromiseOne(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	srv := httptest.NewServer(http.HandlerFunc(scriptedCoupons))
	t.Cleanup(srv.Close)
	b.llmURL = srv.URL + "/v1"
	// The customer's daily limit would refuse the second coupon anyway;
	// raise it so only the per-answer limit is at work.
	if err := b.db.SetCouponPolicy(context.Background(), "demo",
		storage.CouponPolicy{PerUserPerDay: 10, BudgetPerDayCents: 100000}); err != nil {
		t.Fatal(err)
	}
	b.start(t, func(c *Config, l *LimitsConfig) { c.Tools = b.tools })
	// p2 with an order-like number: offered tools, answered without streaming.
	m := plainMessage(peakdesk.P2, "u7", "my parcel 1234567 is late, I want coupons")
	b.publish(t, m)
	storagetest.WaitFor(t, "the answer", 15*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	r := b.replies(t, m.ConversationID)
	if len(r) != 1 || r[0].source != peakdesk.SourceLLM {
		t.Fatalf("replies %+v; want the model's answer", r)
	}
	if kinds := b.actionsOf(t, r[0].id); len(kinds) != 1 || kinds[0] != string(peakdesk.ActionCouponIssue) {
		t.Fatalf("actions of the reply %v; want one coupon.issue", kinds)
	}
	if n := strings.Count(r[0].text, "one coupon or refund may be promised per answer"); n != 2 {
		t.Fatalf("reply %q tells of %d refusals; want 2", r[0].text, n)
	}
}
