package workers

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// With the Answerer's HTTP client on the worker's transport, every HTTP
// call (here: each attempt of the caller's retries) feeds the adaptive
// limit: a provider answering 429 makes the worker back off, and the
// customer gets the fallback.
func TestLLMTransportBacksOffOnOverload(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{transport: true, faults: llmsim.Faults{
		ErrorRate: 1, ErrorStatuses: map[int]float64{429: 1}, RetryAfter: 10 * time.Millisecond}})
	w := b.start(t, func(c *Config, l *LimitsConfig) { l.Concurrency, l.MinConcurrency = 16, 2 })
	m := message(peakdesk.P1, "", "hello")
	b.publish(t, m)
	storagetest.WaitFor(t, "the handoff", 20*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	if got := w.limits.Limit(); got >= 16 {
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
	b.start(t, func(c *Config, l *LimitsConfig) { l.Concurrency, l.ProviderRPM = 16, 600 })
	storagetest.WaitFor(t, "25 answers", 20*time.Second, func() bool { return b.answered(t, ids(msgs)) == 25 })
	st := b.sim.Stats()
	if st.ByStatus[429] != 0 || st.ByStatus[200] != 25 {
		t.Fatalf("simulator statuses %v; want 25 answers and no 429", st.ByStatus)
	}
}

// recordingTransport notes the size of each request it passes on.
type recordingTransport struct {
	next    http.RoundTripper
	lengths []int64
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.lengths = append(r.lengths, req.ContentLength)
	return r.next.RoundTrip(req)
}

// A call's tokens are settled with the usage the LLM client parsed from the
// answer (plain or streamed): the budget is charged what the provider
// counted. A call that reports no usage keeps its estimate.
func TestLLMTransportSettlesWithTheReportedUsage(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		faults llmsim.Faults
		stream bool
		usage  bool
	}{
		{"plain", llmsim.Faults{}, false, true},
		{"stream", llmsim.Faults{}, true, true},
		{"stream cut before the usage", llmsim.Faults{StreamCutRate: 1}, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(llmsim.New(tc.faults))
			t.Cleanup(srv.Close)
			limits, err := NewLimits(LimitsConfig{Concurrency: 4, ProviderTPM: 6_000_000})
			if err != nil {
				t.Fatal(err)
			}
			rec := &recordingTransport{next: http.DefaultTransport}
			client, err := llm.New(llm.Config{BaseURL: srv.URL + "/v1", Model: "sim",
				HTTPClient: &http.Client{Transport: NewLLMTransport(rec, limits)}})
			if err != nil {
				t.Fatal(err)
			}
			req := llm.Request{Turns: []llm.Turn{{Role: llm.RoleUser, Text: "where is my parcel"}}}
			if tc.stream {
				req.OnDelta = func(string) {}
			}
			comp, err := client.Do(withPriority(context.Background(), peakdesk.P1), req)
			if tc.usage && err != nil {
				t.Fatal(err)
			}
			if len(rec.lengths) != 1 || rec.lengths[0] <= 0 {
				t.Fatalf("request sizes %v, want one call of known size", rec.lengths)
			}
			// The call reserved its estimate; what the provider counted
			// settles the difference (ProviderLimiter's debt).
			estimate := 150 + float64(rec.lengths[0]/3)
			want := 0.0 // no usage: the estimate stands
			if tc.usage {
				used := comp.PromptTokens + comp.CompletionTokens
				if used <= 0 {
					t.Fatalf("completion %+v reports no usage", comp)
				}
				want = float64(used) - estimate
			}
			limits.provider.mu.Lock()
			debt := limits.provider.debt
			limits.provider.mu.Unlock()
			if debt != want {
				t.Fatalf("budget settled by %v tokens, want %v", debt, want)
			}
		})
	}
}
