package llm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// testBundle is what one test's Caller talks to.
type testBundle struct {
	sim    *llmsim.Sim
	url    string
	clock  *storagetest.Clock
	rdb    *redis.Client
	prefix string
	reg    *prometheus.Registry
}

// setup starts a simulated provider with faults f and returns a Caller on
// it with its own Redis key prefix (so tests never share a breaker).
func setup(t *testing.T, f llmsim.Faults, mod func(*llm.CallerConfig)) (*llm.Caller, *testBundle) {
	t.Helper()
	b := &testBundle{sim: llmsim.New(f), clock: storagetest.NewClock(), prefix: randomPrefix()}
	srv := httptest.NewServer(b.sim)
	t.Cleanup(srv.Close)
	b.url = srv.URL + "/v1"
	b.rdb = openRedis(t)
	c, reg := newCaller(t, b, b.rdb, mod)
	b.reg = reg
	return c, b
}

func newCaller(t *testing.T, b *testBundle, rdb *redis.Client, mod func(*llm.CallerConfig)) (*llm.Caller, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := llm.CallerConfig{Redis: rdb, KeyPrefix: b.prefix, Clock: b.clock, Registerer: reg,
		CallTimeout: 5 * time.Second, RetryStep: time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := llm.NewCaller(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, reg
}

func openRedis(t testing.TB) *redis.Client {
	t.Helper()
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis: %v (make test starts it)", err)
	}
	return rdb
}

func randomPrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "pdtest:" + hex.EncodeToString(b[:]) + ":"
}

func call(b *testBundle, model string) llm.Call {
	return llm.Call{BaseURL: b.url, Model: model, Deadline: b.clock.Now().Add(30 * time.Second),
		Turns: []llm.Turn{{Role: llm.RoleUser, Text: "双11满减怎么算？"}}}
}

func TestCallRetriesEachStatusClassAsSpecified(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		faults  llmsim.Faults
		calls   int64
		outcome string
	}{
		{"408 request timeout", errorsOf(408), 3, llm.OutcomeTimeout},
		{"429 rate limited", errorsOf(429), 3, llm.OutcomeRateLimited},
		{"500", errorsOf(500), 3, llm.OutcomeServerError},
		{"502", errorsOf(502), 3, llm.OutcomeServerError},
		{"503", errorsOf(503), 3, llm.OutcomeServerError},
		{"504", errorsOf(504), 3, llm.OutcomeServerError},
		{"529 overloaded", errorsOf(529), 3, llm.OutcomeOverloaded},
		{"400", errorsOf(400), 1, llm.OutcomeRejected},
		{"401", errorsOf(401), 1, llm.OutcomeRejected},
		{"403", errorsOf(403), 1, llm.OutcomeRejected},
		{"404 unknown model", errorsOf(404), 1, llm.OutcomeRejected},
		{"429 insufficient_quota", llmsim.Faults{InsufficientQuota: true}, 1, llm.OutcomeQuota},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, tc.faults, func(cfg *llm.CallerConfig) { cfg.BreakerFailures = 10 })
			_, err := c.Do(context.Background(), call(b, "m1"))
			if err == nil {
				t.Fatal("call succeeded against a failing provider")
			}
			if got := b.sim.Stats().Requests; got != tc.calls {
				t.Errorf("provider saw %d calls, want %d", got, tc.calls)
			}
			if got := testutil.ToFloat64(counter(t, b.reg, "m1", tc.outcome)); got != float64(tc.calls) {
				t.Errorf("peakdesk_llm_calls_total{outcome=%q} = %v, want %d", tc.outcome, got, tc.calls)
			}
			if n := len(b.clock.Sleeps()); n != int(tc.calls-1) {
				t.Errorf("%d waits, want %d", n, tc.calls-1)
			}
		})
	}
}

func errorsOf(status int) llmsim.Faults {
	return llmsim.Faults{ErrorRate: 1, ErrorStatuses: map[int]float64{status: 1}}
}

func counter(t *testing.T, reg *prometheus.Registry, model, outcome string) prometheus.Collector {
	t.Helper()
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "peakdesk_llm_calls_total",
		Help: "LLM calls by model and outcome."}, []string{"model", "outcome"})
	existing, err := llm.Register(reg, v)
	if err != nil {
		t.Fatal(err)
	}
	return existing.WithLabelValues(model, outcome)
}

func TestCallWaitsFollowTheLinearSchedule(t *testing.T) {
	t.Parallel()
	c, b := setup(t, errorsOf(500), func(cfg *llm.CallerConfig) {
		cfg.MaxAttempts, cfg.BreakerFailures = 4, 10
	})
	if _, err := c.Do(context.Background(), call(b, "m1")); err == nil {
		t.Fatal("call succeeded against a failing provider")
	}
	sleeps := b.clock.Sleeps()
	if len(sleeps) != 3 {
		t.Fatalf("waits %v, want 3", sleeps)
	}
	for i, d := range sleeps {
		// Step 1 s: the n-th wait is n s ± 20 % jitter.
		want := time.Duration(i+1) * time.Second
		if d < want*8/10 || d > want*12/10 {
			t.Errorf("wait %d = %v, want %v ± 20%%", i+1, d, want)
		}
	}
	t.Logf("linear waits: %v", sleeps)
}

func TestCallHonoursRetryAfterInFull(t *testing.T) {
	t.Parallel()
	f := errorsOf(429)
	f.RetryAfter = 1500 * time.Millisecond
	c, b := setup(t, f, func(cfg *llm.CallerConfig) { cfg.BreakerFailures = 10 })
	if _, err := c.Do(context.Background(), call(b, "m1")); err == nil {
		t.Fatal("call succeeded against a rate-limited provider")
	}
	// retry-after-ms (1500) wins over the coarser Retry-After (2 s) and
	// over the linear schedule (1 s, 2 s).
	want := []time.Duration{1500 * time.Millisecond, 1500 * time.Millisecond}
	if got := b.clock.Sleeps(); !equalDurations(got, want) {
		t.Errorf("waits %v, want %v", got, want)
	}
}

func TestCallFallsBackAtOnceWhenRetryAfterMissesTheDeadline(t *testing.T) {
	t.Parallel()
	f := errorsOf(429)
	f.RetryAfter = 20 * time.Second
	c, b := setup(t, f, nil)
	cl := call(b, "m1")
	cl.Deadline = b.clock.Now().Add(10 * time.Second)
	_, err := c.Do(context.Background(), cl)
	if err == nil || !strings.Contains(err.Error(), "miss the deadline") {
		t.Fatalf("err = %v, want a 429 that would miss the deadline", err)
	}
	if got := b.sim.Stats().Requests; got != 1 {
		t.Errorf("provider saw %d calls, want 1", got)
	}
	if s := b.clock.Sleeps(); len(s) != 0 {
		t.Errorf("waited %v, want no wait", s)
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBreakerOpensAfterThreeFailuresRefusesWithoutWaitingAndRecovers(t *testing.T) {
	t.Parallel()
	c, b := setup(t, llmsim.Faults{Outage: true}, func(cfg *llm.CallerConfig) {
		cfg.MaxAttempts = 5
		cfg.BreakerOpen = 300 * time.Millisecond
	})
	ctx := context.Background()

	// Three consecutive 503s open it: the fourth attempt is not made.
	_, err := c.Do(ctx, call(b, "m1"))
	if err == nil {
		t.Fatal("call succeeded during an outage")
	}
	if got := b.sim.Stats().Requests; got != 3 {
		t.Errorf("provider saw %d calls, want 3 (the breaker opens after the third failure)", got)
	}
	if got := c.BreakerState(ctx, b.url, "", "m1"); got != gobreaker.StateOpen {
		t.Fatalf("breaker %v, want open", got)
	}
	waits := len(b.clock.Sleeps())

	// While open: refused at once, no call, no wait.
	for range 5 {
		if _, err := c.Do(ctx, call(b, "m1")); !errors.Is(err, llm.ErrBreakerOpen) {
			t.Fatalf("err = %v, want ErrBreakerOpen", err)
		}
	}
	if got := b.sim.Stats().Requests; got != 3 {
		t.Errorf("provider saw %d calls while the breaker was open, want none", got-3)
	}
	if got := len(b.clock.Sleeps()); got != waits {
		t.Errorf("an open breaker cost %d waits", got-waits)
	}
	// Another model of the same provider has its own breaker.
	b.sim.SetFaults(llmsim.Faults{Latency: 200 * time.Millisecond})
	if _, err := c.Do(ctx, call(b, "m2")); err != nil {
		t.Fatalf("m2: %v", err)
	}

	// Half-open after BreakerOpen: one probe goes through, the rest are
	// refused until it has succeeded; then it is closed.
	storagetest.WaitFor(t, "the breaker to be half-open", 5*time.Second, func() bool {
		return c.BreakerState(ctx, b.url, "", "m1") == gobreaker.StateHalfOpen
	})
	b.sim.ResetStats()
	var wg sync.WaitGroup
	var mu sync.Mutex
	refused := 0
	for range 8 {
		wg.Go(func() {
			if _, err := c.Do(ctx, call(b, "m1")); errors.Is(err, llm.ErrBreakerOpen) {
				mu.Lock()
				refused++
				mu.Unlock()
			} else if err != nil {
				t.Errorf("probe: %v", err)
			}
		})
	}
	wg.Wait()
	if got := b.sim.Stats().Requests; got != 1 || refused != 7 {
		t.Errorf("half-open let %d calls through and refused %d, want 1 probe and 7 refused", got, refused)
	}
	if got := c.BreakerState(ctx, b.url, "", "m1"); got != gobreaker.StateClosed {
		t.Errorf("breaker %v after a good probe, want closed", got)
	}
	if _, err := c.Do(ctx, call(b, "m1")); err != nil {
		t.Errorf("after recovery: %v", err)
	}
}

func TestBreakerOpenedByOneProcessRefusesInAnother(t *testing.T) {
	t.Parallel()
	c1, b := setup(t, llmsim.Faults{Outage: true}, nil)
	// A second process: its own Redis client, registry and clock, the
	// same Redis and the same provider.
	clock2 := storagetest.NewClock()
	b2 := *b
	b2.clock = clock2
	c2, _ := newCaller(t, &b2, openRedis(t), nil)
	ctx := context.Background()

	if _, err := c1.Do(ctx, call(b, "m1")); err == nil {
		t.Fatal("call succeeded during an outage")
	}
	before := b.sim.Stats().Requests
	_, err := c2.Do(ctx, call(&b2, "m1"))
	if !errors.Is(err, llm.ErrBreakerOpen) {
		t.Fatalf("second process: err = %v, want ErrBreakerOpen", err)
	}
	if got := b.sim.Stats().Requests; got != before {
		t.Errorf("second process called the provider %d times", got-before)
	}
	if s := clock2.Sleeps(); len(s) != 0 {
		t.Errorf("second process waited %v", s)
	}
}

func TestBreakerIgnoresErrorsOfTheRequest(t *testing.T) {
	t.Parallel()
	for _, status := range []int{400, 404, 422} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, errorsOf(status), nil)
			ctx := context.Background()
			for range 5 {
				if _, err := c.Do(ctx, call(b, "m1")); err == nil || errors.Is(err, llm.ErrBreakerOpen) {
					t.Fatalf("err = %v, want the provider's %d", err, status)
				}
			}
			if got := c.BreakerState(ctx, b.url, "", "m1"); got != gobreaker.StateClosed {
				t.Errorf("breaker %v after %d errors, want closed: a bad request says nothing of the provider or the key",
					got, status)
			}
		})
	}
}

// TestOneShopsFailingKeyLeavesTheOtherShopsBreakerClosed: breakers are per
// credential. A key the provider refuses (revoked: 401, out of quota, over
// its own rate limit: 429) opens the breaker of that key alone; another key
// on the same base URL and model keeps being answered.
func TestOneShopsFailingKeyLeavesTheOtherShopsBreakerClosed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		faults llmsim.Faults
		calls  int64 // the provider sees this many calls with the bad key before its breaker opens
	}{
		{"401 revoked", llmsim.Faults{KeyErrors: map[string]int{"sk-shop-a": 401}}, 3},
		{"429 rate limited", llmsim.Faults{KeyErrors: map[string]int{"sk-shop-a": 429}, RetryAfter: time.Millisecond}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, tc.faults, nil)
			ctx := context.Background()
			shopA, shopB := call(b, "m1"), call(b, "m1")
			shopA.APIKey, shopA.OwnKey = "sk-shop-a", true
			shopB.APIKey, shopB.OwnKey = "sk-shop-b", true

			for range 5 {
				if _, err := c.Do(ctx, shopA); err == nil {
					t.Fatal("shop A's refused key got an answer")
				}
			}
			if got := c.BreakerState(ctx, b.url, "sk-shop-a", "m1"); got != gobreaker.StateOpen {
				t.Fatalf("shop A's breaker %v, want open", got)
			}
			if got := b.sim.Stats().ByKey[llm.KeyFingerprint("sk-shop-a")]; got != tc.calls {
				t.Errorf("provider saw %d calls with shop A's key, want %d: an open breaker makes none", got, tc.calls)
			}
			if _, err := c.Do(ctx, shopA); !errors.Is(err, llm.ErrBreakerOpen) {
				t.Errorf("shop A: err = %v, want ErrBreakerOpen", err)
			}

			// Shop B: same base URL, same model, its own key.
			for i := range 5 {
				if comp, err := c.Do(ctx, shopB); err != nil || comp.Text == "" {
					t.Fatalf("shop B's call %d: %v", i, err)
				}
			}
			if got := c.BreakerState(ctx, b.url, "sk-shop-b", "m1"); got != gobreaker.StateClosed {
				t.Errorf("shop B's breaker %v, want closed", got)
			}
			// The process-wide key's breaker is another one again.
			if _, err := c.Do(ctx, call(b, "m1")); err != nil {
				t.Errorf("default key: %v", err)
			}

			// The metric: shops' keys share one series showing the worst
			// state; the default key's series stays closed. No fingerprint
			// is a label.
			if got := breakerGauge(t, b, "m1", "shop"); got != float64(gobreaker.StateOpen) {
				t.Errorf("breaker state{credential=shop} = %v, want %d (open)", got, gobreaker.StateOpen)
			}
			if got := breakerGauge(t, b, "m1", "default"); got != float64(gobreaker.StateClosed) {
				t.Errorf("breaker state{credential=default} = %v, want closed", got)
			}
		})
	}
}

func TestBreakerFallsBackToLocalWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1.
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = dead.Close() })
	sim := llmsim.New(llmsim.Faults{Outage: true})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	b := &testBundle{sim: sim, url: srv.URL + "/v1", clock: storagetest.NewClock(), prefix: randomPrefix()}
	c, _ := newCaller(t, b, dead, nil)
	ctx := context.Background()
	start := time.Now()
	for range 3 {
		_, _ = c.Do(ctx, call(b, "m1"))
	}
	if _, err := c.Do(ctx, call(b, "m1")); !errors.Is(err, llm.ErrBreakerOpen) {
		t.Fatalf("err = %v, want the local breaker open", err)
	}
	if got := sim.Stats().Requests; got != 3 {
		t.Errorf("provider saw %d calls, want 3", got)
	}
	// Not a timing assertion on speed: a guard against gobreaker's 5 s
	// lock retry loop, which a failing store must never enter.
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("calls with Redis down took %v", took)
	}
}

func TestStreamDeliversDeltasAndReportsABreak(t *testing.T) {
	t.Parallel()
	c, b := setup(t, llmsim.Faults{}, nil)
	ctx := context.Background()
	var got strings.Builder
	cl := call(b, "m1")
	cl.OnDelta = func(s string) { got.WriteString(s) }
	comp, err := c.Do(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != comp.Text || !strings.Contains(comp.Text, "双11满减怎么算") {
		t.Errorf("deltas %q, completion %q", got.String(), comp.Text)
	}
	if comp.PromptTokens == 0 || comp.CompletionTokens == 0 {
		t.Errorf("stream usage not reported: %+v", comp)
	}

	b.sim.SetFaults(llmsim.Faults{StreamCutRate: 1})
	b.sim.ResetStats()
	got.Reset()
	_, err = c.Do(ctx, cl)
	if !errors.Is(err, llm.ErrStreamBroken) {
		t.Fatalf("err = %v, want ErrStreamBroken", err)
	}
	if st := b.sim.Stats(); st.Requests != 1 || st.StreamsCut != 1 {
		t.Errorf("stats %+v: a broken stream with text shown must not be retried", st)
	}
	if got.Len() == 0 {
		t.Error("no partial text before the cut")
	}
}

func TestBreakerStateMetric(t *testing.T) {
	t.Parallel()
	c, b := setup(t, llmsim.Faults{Outage: true}, nil)
	_, _ = c.Do(context.Background(), call(b, "m1"))
	if got := breakerGauge(t, b, "m1", "default"); got != float64(gobreaker.StateOpen) {
		t.Errorf("peakdesk_llm_breaker_state = %v, want %d (open)", got, gobreaker.StateOpen)
	}
}

// breakerGauge reads peakdesk_llm_breaker_state of model at the bundle's
// provider for credential ("default" or "shop").
func breakerGauge(t *testing.T, b *testBundle, model, credential string) float64 {
	t.Helper()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "peakdesk_llm_breaker_state",
		Help: "LLM circuit breaker state by provider, model and credential (default: the process-wide key; " +
			"shop: the worst of the shops' own keys) as this process saw it last: 0 closed, 1 half-open, 2 open."},
		[]string{"provider", "model", "credential"})
	g, err := llm.Register(b.reg, g)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(strings.TrimSuffix(b.url, "/v1"), "http://")
	return testutil.ToFloat64(g.WithLabelValues(host, model, credential))
}

var _ http.Handler = (*llmsim.Sim)(nil)

// TestMaxTokensReachesTheProvider: the completion limit goes out on every
// call, in the one field the provider is configured to read, and the
// provider's answer stops there.
func TestMaxTokensReachesTheProvider(t *testing.T) {
	t.Parallel()
	for _, param := range []string{"", llm.ParamMaxTokens, llm.ParamMaxCompletionTokens} {
		t.Run("param="+param, func(t *testing.T) {
			t.Parallel()
			c, b := setup(t, llmsim.Faults{}, nil)
			var mu sync.Mutex
			var bodies []map[string]any
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				data, _ := io.ReadAll(r.Body)
				var m map[string]any
				_ = json.Unmarshal(data, &m)
				mu.Lock()
				bodies = append(bodies, m)
				mu.Unlock()
				r.Body = io.NopCloser(bytes.NewReader(data))
				b.sim.ServeHTTP(w, r)
			}))
			t.Cleanup(srv.Close)
			cl := call(b, "m1")
			cl.BaseURL = srv.URL + "/v1"
			cl.Turns = []llm.Turn{{Role: llm.RoleUser, Text: "What time does the Double 11 sale start, and which coupons stack?"}}
			cl.MaxTokens, cl.MaxTokensParam = 4, param
			comp, err := c.Do(context.Background(), cl)
			if err != nil {
				t.Fatal(err)
			}
			if comp.CompletionTokens != 4 {
				t.Errorf("completion tokens %d, want the limit 4", comp.CompletionTokens)
			}
			cl.OnDelta = func(string) {}
			if comp, err := c.Do(context.Background(), cl); err != nil || comp.CompletionTokens != 4 {
				t.Errorf("streamed: %+v %v, want 4 completion tokens", comp, err)
			}
			if st := b.sim.Stats(); st.WithMaxTokens != 2 || st.Truncated != 2 {
				t.Errorf("simulator saw %d calls with a limit, cut %d; want 2 and 2", st.WithMaxTokens, st.Truncated)
			}
			want, other := "max_tokens", "max_completion_tokens"
			if param == llm.ParamMaxCompletionTokens {
				want, other = other, want
			}
			mu.Lock()
			defer mu.Unlock()
			for _, m := range bodies {
				if m[want] != float64(4) || m[other] != nil {
					t.Errorf("request has %s=%v and %s=%v, want only %s=4", want, m[want], other, m[other], want)
				}
			}
		})
	}

	c, b := setup(t, llmsim.Faults{}, nil)
	cl := call(b, "m1")
	cl.MaxTokens, cl.MaxTokensParam = 4, "max_output_tokens"
	if _, err := c.Do(context.Background(), cl); err == nil {
		t.Error("an unknown limit field was accepted")
	}
	if got := b.sim.Stats().Requests; got != 0 {
		t.Errorf("provider saw %d calls with an unknown limit field", got)
	}
}
