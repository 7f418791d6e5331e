package main

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
)

// TestLLMCapsFallBackWithoutCallingTheLLM: through the real roles, a shop
// whose day's LLM budget is spent and a customer past their LLM answers for
// the hour are answered without an LLM call (no FAQ entry matches here:
// by a handoff), while another customer of the same shop is still answered
// by the LLM, and every call carries the shop's max_tokens.
func TestLLMCapsFallBackWithoutCallingTheLLM(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	ctx := context.Background()
	db, err := storage.Open(ctx, b.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	one, spent := 1, int64(0)
	for _, l := range []storage.LLMLimits{
		{ShopID: "demo", MaxTokens: 200, CallsPerUserPerHour: &one},
		{ShopID: "other", SpendCapPerDayCents: &spent},
	} {
		if err := db.SetShopLLMLimits(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	p := b.start(t, []string{roleIngest, roleWorker}, func(c *Config) { c.LLMPrices = "peakdesk-sim=0.27/1.1" })
	base := "http://" + p.Addr()

	// Users and questions of their own: hourly counts and the answer cache
	// in Redis outlive the test.
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	ask := func(tok, text string) string {
		t.Helper()
		text += " #" + run
		r := call(t, "POST", base+"/v1/messages?wait=10s", tok, jsonBody(t, map[string]any{"text": text}))
		reply, _ := r.body["reply"].(map[string]any)
		if r.status != http.StatusOK || reply == nil {
			t.Fatalf("POST %q: %d %s; want 200 answered", text, r.status, r.raw)
		}
		source, _ := reply["source"].(string)
		return source
	}
	u1, u2 := bearer(t, "demo", "u1-"+run), bearer(t, "demo", "u2-"+run)
	if got := ask(u1, "今晚几点开始抢购？"); got != "llm" {
		t.Errorf("u1's first question: source %q, want llm", got)
	}
	if got := ask(u1, "直播间的福袋怎么抢？"); got != "handoff" {
		t.Errorf("u1's second question in the hour: source %q, want handoff (one LLM answer an hour)", got)
	}
	if got := ask(u2, "预售定金可以退吗？"); got != "llm" {
		t.Errorf("u2's question: source %q, want llm: u1's cap is not u2's", got)
	}
	if got := ask(bearer(t, "other", "u1-"+run), "会员积分怎么用？"); got != "handoff" {
		t.Errorf("the spent shop's answer: source %q, want handoff", got)
	}
	if st := b.llm.Stats(); st.Requests != 2 || st.WithMaxTokens != 2 {
		t.Errorf("LLM saw %d calls, %d with a completion limit; want 2 and 2", st.Requests, st.WithMaxTokens)
	}
}
