package workers

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/workers/workertest"
)

// With the Answerer's HTTP client on the worker's transport, every HTTP
// call (here: each attempt of the caller's retries) feeds the adaptive
// limit: a provider answering 429 makes the worker back off, and the
// customer gets the fallback.
func TestLLMTransportBacksOffOnOverload(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{transport: true, faults: llmsim.Faults{
		ErrorRate: 1, ErrorStatuses: map[int]float64{429: 1}, RetryAfter: 10 * time.Millisecond}})
	w := b.start(t, func(c *Config) { c.Concurrency, c.MinConcurrency = 16, 2 })
	m := message(peakdesk.P1, "", "hello")
	b.publish(t, m)
	workertest.WaitFor(t, "the handoff", 20*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	if got := w.aimd.Limit(); got >= 16 {
		t.Fatalf("limit %d after 429s, want it below 16", got)
	}
	if n := b.sim.Stats().ByStatus[429]; n < 2 {
		t.Fatalf("%d calls refused, want one per attempt", n)
	}
}

// With the Answerer's HTTP client on the worker's transport, the provider's budget holds
// for every call: the simulator, limited to 10 requests/s, refuses none.
func TestLLMTransportKeepsTheBudget(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{transport: true, faults: llmsim.Faults{RPM: 600}})
	// 25 calls at once would be 429 beyond the simulator's burst of 10.
	var msgs []peakdesk.Message
	for range 25 {
		msgs = append(msgs, message(peakdesk.P2, "", "hello"))
	}
	b.publish(t, msgs...)
	b.start(t, func(c *Config) { c.Concurrency, c.ProviderRPM = 16, 600 })
	workertest.WaitFor(t, "25 answers", 20*time.Second, func() bool { return b.answered(t, ids(msgs)) == 25 })
	st := b.sim.Stats()
	if st.ByStatus[429] != 0 || st.ByStatus[200] != 25 {
		t.Fatalf("simulator statuses %v; want 25 answers and no 429", st.ByStatus)
	}
}

// The tokens a call used are read from the usage at the end of the answer,
// plain or streamed; without usage the estimate stands.
func TestUsageBodySettlesWithReportedTokens(t *testing.T) {
	cases := []struct {
		name string
		body string
		want int
	}{
		{"plain", `{"choices":[],"usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150}}`, 150},
		{"stream", "data: {\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n", 12},
		{"long", `{"choices":[{"message":{"content":"` + strings.Repeat("x", 10000) + `"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`, 3},
		{"none", `{"choices":[]}`, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := -2
			b := &usageBody{ReadCloser: io.NopCloser(strings.NewReader(tc.body)), done: func(n int) { got = n }}
			if _, err := io.Copy(io.Discard, b); err != nil {
				t.Fatal(err)
			}
			_ = b.Close()
			if got != tc.want {
				t.Fatalf("settled %d tokens, want %d", got, tc.want)
			}
		})
	}
}
