package answer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/llm"
)

func (b *bodies) list() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.seen)
}

// setLimits changes shop's LLM limits, starting from the defaults.
func setLimits(t testing.TB, db *storage.DB, shopID string, change func(*storage.LLMLimits)) {
	t.Helper()
	l := storage.DefaultLLMLimits(shopID)
	change(&l)
	if err := db.SetShopLLMLimits(context.Background(), l); err != nil {
		t.Fatal(err)
	}
}

// inConversation gives req a history, so that it is neither coalesced with
// identical questions nor answered from the cache: every such request is a
// turn of its own.
func inConversation(req answer.Request, user string) answer.Request {
	req.User = user
	req.History = []llm.Turn{{Role: llm.RoleUser, Text: "你好"}, {Role: llm.RoleAssistant, Text: "您好，请问有什么可以帮您？"}}
	return req
}

// cappedMetric reads peakdesk_llm_capped_total{shop, reason} from reg.
func cappedMetric(t *testing.T, reg *prometheus.Registry, shopID, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "peakdesk_llm_capped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["shop"] == shopID && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func i64(v int64) *int64 { return &v }

// The questions: one the FAQ answers, one it does not.
const (
	faqQuestion   = "双11满减规则是怎样的"
	otherQuestion = "你们老板叫什么名字"
)

func TestShopMaxTokensReachesTheProviderOnEveryCall(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) { c.SettingsTTL = time.Nanosecond })

	// The default, 400, on every call: both rounds of a tool call included.
	box := &toolBox{}
	ans := mustAnswer(t, a, withTools(request(b.clock, "I want a refund for order "+orderA+", it arrived broken"), box))
	if ans.Source != peakdesk.SourceLLM || len(box.all()) != 1 {
		t.Fatalf("answer %+v with tool calls %v, want the LLM's after one refund", ans, box.all())
	}
	sent := b.bodies.list()
	if len(sent) != 2 {
		t.Fatalf("%d calls, want 2 (the tool round and the answer)", len(sent))
	}
	for i, body := range sent {
		var req map[string]any
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			t.Fatal(err)
		}
		if req["max_tokens"] != float64(storage.DefaultLLMMaxTokens) || req["max_completion_tokens"] != nil {
			t.Errorf("call %d: max_tokens %v, max_completion_tokens %v; want max_tokens 400 alone",
				i, req["max_tokens"], req["max_completion_tokens"])
		}
	}

	// The shop's own limit: the provider stops there.
	setLimits(t, b.db, shop, func(l *storage.LLMLimits) { l.MaxTokens = 5 })
	ans = mustAnswer(t, a, request(b.clock, "满减可以跨店凑吗？"))
	if ans.Source != peakdesk.SourceLLM || ans.CompletionTokens != 5 {
		t.Errorf("answer %+v, want the LLM's cut at 5 completion tokens", ans)
	}
	if st := b.sim.Stats(); st.WithMaxTokens != st.Requests || st.Truncated != 1 {
		t.Errorf("simulator: %d of %d calls with a limit, %d truncated; want all, and 1", st.WithMaxTokens, st.Requests, st.Truncated)
	}
}

func TestSpendCapStopsTheLLMThenFAQThenHandoff(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) {
		c.Provider.Models = []string{"primary"}
		c.Registerer = reg
	})
	// A worst case of about one fen a call (100 completion tokens at $8 per
	// million, the prompt at $2, 7.2 CNY per dollar), about half a fen
	// spent: three fen a day last a handful of answers.
	const capCents = 3
	setLimits(t, b.db, shop, func(l *storage.LLMLimits) {
		l.MaxTokens = 100
		l.SpendCapPerDayCents = i64(capCents)
	})
	fx, _ := llm.ParseFXRates(llm.DefaultFXRates)

	var sources []string
	var spent int64 // µ¥, as the counter settles it
	llmAnswers := 0
	for i := range 30 {
		q := faqQuestion
		if i%2 == 1 {
			q = otherQuestion
		}
		ans := mustAnswer(t, a, inConversation(request(b.clock, q), "u"+strconv.Itoa(i)))
		sources = append(sources, ans.Source)
		micro, _ := fx.MicroUnits("CNY", ans.CostMicroUSD)
		spent += micro
		switch {
		case ans.Source == peakdesk.SourceLLM:
			llmAnswers++
			if ans.Capped != "" {
				t.Errorf("answer %d: an LLM answer marked capped %q", i, ans.Capped)
			}
		case ans.Capped != answer.CapSpend:
			t.Errorf("answer %d: %+v, want the LLM's or one capped by the spend cap", i, ans)
		case q == faqQuestion && ans.Source != peakdesk.SourceFAQ:
			t.Errorf("answer %d: capped %q answered by %s, want the FAQ", i, q, ans.Source)
		case q == otherQuestion && (ans.Source != peakdesk.SourceHandoff || !ans.Handoff):
			t.Errorf("answer %d: capped %q answered by %s, want a handoff", i, q, ans.Source)
		}
	}
	if llmAnswers == 0 || llmAnswers > 10 {
		t.Fatalf("sources %v: want the LLM first, then the cap", sources)
	}
	for i, s := range sources[20:] {
		if s == peakdesk.SourceLLM {
			t.Errorf("answer %d from the LLM: the day's cap was spent long before (sources %v)", 20+i, sources)
		}
	}
	// Past the cap no call is made; what was spent stays within the cap and
	// is what the counter holds (every reservation settled to its cost).
	if got := b.sim.Stats().Requests; got != int64(llmAnswers) {
		t.Errorf("provider saw %d calls for %d LLM answers", got, llmAnswers)
	}
	lim := answer.NewLimiter(openRedis(t), b.prefix)
	counter, err := openRedis(t).Get(context.Background(), lim.SpendKey(shop, b.clock.Now())).Int64()
	if err != nil {
		t.Fatal(err)
	}
	if counter != spent || spent > capCents*10_000 {
		t.Errorf("counter %d µ¥, spent %d µ¥, cap %d µ¥: want counter = spent ≤ cap", counter, spent, capCents*10_000)
	}
	if got := cappedMetric(t, reg, shop, answer.CapSpend); got != float64(30-llmAnswers) {
		t.Errorf("peakdesk_llm_capped_total{reason=spend_cap} = %v, want %d", got, 30-llmAnswers)
	}
}

// gated lets calls reach the provider only when the test opens the gate,
// counting those that arrived.
type gated struct {
	next    http.Handler
	arrived atomic.Int64
	gate    chan struct{}
}

func (g *gated) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.arrived.Add(1)
	select {
	case <-g.gate:
	case <-r.Context().Done():
		return
	}
	g.next.ServeHTTP(w, r)
}

// TestConcurrentAnswersNeverReservePastTheCap: fifty answers at once against
// a cap with room for ten worst cases make exactly ten calls; the forty
// others fall back without one.
func TestConcurrentAnswersNeverReservePastTheCap(t *testing.T) {
	t.Parallel()
	g := &gated{gate: make(chan struct{})}
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) {
		c.Provider.Models = []string{"primary"}
		c.SettingsTTL = time.Nanosecond
		c.LLM.CallTimeout = time.Minute // calls wait at the gate
	})
	g.next = b.bodies
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	if err := b.db.SetShopLLMSettings(context.Background(), storage.LLMSettings{ShopID: shop, BaseURL: srv.URL + "/v1"}); err != nil {
		t.Fatal(err)
	}
	// A large max_tokens makes the worst case large next to the cap's
	// granularity (a fen is 10,000 µ¥).
	setLimits(t, b.db, shop, func(l *storage.LLMLimits) {
		l.MaxTokens = 4000
		l.SpendCapPerDayCents = i64(1_000_000)
	})
	rdb := openRedis(t)
	key := answer.NewLimiter(rdb, b.prefix).SpendKey(shop, b.clock.Now())
	ctx := context.Background()

	// 1. Learn the worst case of one such turn: the reservation held while
	// its call waits at the gate.
	req := func() answer.Request { return inConversation(request(b.clock, faqQuestion), "") }
	first := make(chan *answer.Answer)
	go func() { first <- mustAnswer(t, a, req()) }()
	var worst int64
	storagetest.WaitFor(t, "the first call's reservation", 10*time.Second, func() bool {
		worst, _ = rdb.Get(ctx, key).Int64()
		return worst > 0
	})
	if worst < 20_000 {
		t.Fatalf("worst case %d µ¥: too small for this test", worst)
	}
	g.gate <- struct{}{}
	if ans := <-first; ans.Source != peakdesk.SourceLLM {
		t.Fatalf("first answer %+v", ans)
	}
	if err := rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}

	// 2. Room for ten and a half worst cases: fifty turns at once.
	capCents := (10*worst + worst/2) / 10_000
	setLimits(t, b.db, shop, func(l *storage.LLMLimits) {
		l.MaxTokens = 4000
		l.SpendCapPerDayCents = i64(capCents)
	})
	g.arrived.Store(0)
	const n = 50
	answers := make(chan *answer.Answer, n)
	for range n {
		go func() { answers <- mustAnswer(t, a, req()) }()
	}
	// Forty fall back at once; ten wait at the gate with their worst case
	// reserved.
	var capped []*answer.Answer
	for range n - 10 {
		select {
		case ans := <-answers:
			capped = append(capped, ans)
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d answers fell back; %d calls at the gate", len(capped), g.arrived.Load())
		}
	}
	// The ten that reserved may still be on their way to the provider.
	storagetest.WaitFor(t, "ten calls at the gate", 10*time.Second, func() bool { return g.arrived.Load() >= 10 })
	if got := g.arrived.Load(); got != 10 {
		t.Errorf("%d calls reached the provider, want 10", got)
	}
	if used, _ := rdb.Get(ctx, key).Int64(); used != 10*worst || used > capCents*10_000 {
		t.Errorf("reserved %d µ¥, want 10 worst cases (%d) within the cap %d", used, 10*worst, capCents*10_000)
	}
	close(g.gate)
	llmAnswers := 0
	for range 10 {
		if ans := <-answers; ans.Source == peakdesk.SourceLLM {
			llmAnswers++
		}
	}
	for _, ans := range capped {
		if ans.Source != peakdesk.SourceFAQ || ans.Capped != answer.CapSpend {
			t.Errorf("fallback %+v, want the FAQ, capped by spend", ans)
		}
	}
	if llmAnswers != 10 {
		t.Errorf("%d LLM answers, want 10", llmAnswers)
	}
}

// TestReservationsAreAtomic: fifty reservations at once against a cap that
// fits ten get exactly ten, in Redis and, with Redis unreachable, in the
// process; a settled reservation gives its room back; the count starts
// again at midnight in Shanghai.
func TestReservationsAreAtomic(t *testing.T) {
	t.Parallel()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = dead.Close() })
	for _, tc := range []struct {
		name string
		rdb  *redis.Client
	}{{"redis", openRedis(t)}, {"redis unreachable", dead}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lim := answer.NewLimiter(tc.rdb, randomPrefix())
			ctx := context.Background()
			// 23:59:59 in Shanghai on the eve of Double 11.
			eve := time.Date(2025, 11, 10, 23, 59, 59, 0, time.FixedZone("CST", 8*3600))
			var mu sync.Mutex
			var settles []func(int64)
			var wg sync.WaitGroup
			for range 50 {
				wg.Go(func() {
					if ok, settle := lim.Reserve(ctx, "s", eve, 1050, 100); ok {
						mu.Lock()
						settles = append(settles, settle)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if len(settles) != 10 {
				t.Fatalf("%d of 50 reservations of 100 fitted a cap of 1050, want 10", len(settles))
			}
			if ok, _ := lim.Reserve(ctx, "s", eve, 1050, 100); ok {
				t.Error("an 11th reservation fitted")
			}
			// Another shop has its own counter.
			if ok, _ := lim.Reserve(ctx, "other", eve, 1050, 100); !ok {
				t.Error("another shop's reservation was refused")
			}
			// Two calls cost 40 each: 120 back, one more fits.
			settles[0](40)
			settles[1](40)
			if ok, _ := lim.Reserve(ctx, "s", eve, 1050, 100); !ok {
				t.Error("no room after settling two reservations to their cost")
			}
			// One second later it is Double 11: a new day, a new count.
			if ok, _ := lim.Reserve(ctx, "s", eve.Add(time.Second), 1050, 1000); !ok {
				t.Error("the spend of the 10th counted on the 11th")
			}
		})
	}
}

func TestUserCallCapFallsBackAndSparesOtherUsers(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) {
		c.Provider.Models = []string{"primary"}
		c.Registerer = reg
	})
	// The default: 60 LLM answers per user and hour.
	for i := range storage.DefaultLLMCallsPerUserHour {
		ans := mustAnswer(t, a, inConversation(request(b.clock, fmt.Sprintf("问题%d：%s", i, otherQuestion)), "u1"))
		if ans.Source != peakdesk.SourceLLM {
			t.Fatalf("answer %d of u1: %+v, want the LLM's", i+1, ans)
		}
	}
	calls := b.sim.Stats().Requests
	for _, tc := range []struct{ q, source string }{{faqQuestion, peakdesk.SourceFAQ}, {otherQuestion, peakdesk.SourceHandoff}} {
		ans := mustAnswer(t, a, inConversation(request(b.clock, tc.q), "u1"))
		if ans.Source != tc.source || ans.Capped != answer.CapUserCalls {
			t.Errorf("u1's answer past 60: %+v, want %s capped by user calls", ans, tc.source)
		}
	}
	if got := b.sim.Stats().Requests; got != calls {
		t.Errorf("u1 past the cap cost %d calls", got-calls)
	}
	if ans := mustAnswer(t, a, inConversation(request(b.clock, otherQuestion), "u2")); ans.Source != peakdesk.SourceLLM {
		t.Errorf("u2: %+v, want the LLM's: another user's cap is not theirs", ans)
	}

	// A general question u1 asks first leads the burst; its capped answer
	// is not the burst's answer for u2.
	general := "今晚几点开始抢购"
	q1 := request(b.clock, general)
	q1.User = "u1"
	if ans := mustAnswer(t, a, q1); ans.Capped != answer.CapUserCalls {
		t.Fatalf("u1's general question: %+v, want capped", ans)
	}
	q2 := request(b.clock, general)
	q2.User = "u2"
	if ans := mustAnswer(t, a, q2); ans.Source != peakdesk.SourceLLM {
		t.Errorf("u2's general question after u1's capped one: %+v, want the LLM's", ans)
	}
	if got := cappedMetric(t, reg, shop, answer.CapUserCalls); got != 3 {
		t.Errorf("peakdesk_llm_capped_total{reason=user_calls} = %v, want 3", got)
	}

	// The next hour, u1 is answered by the LLM again.
	b.clock.Advance(time.Hour)
	if ans := mustAnswer(t, a, inConversation(request(b.clock, otherQuestion), "u1")); ans.Source != peakdesk.SourceLLM {
		t.Errorf("u1 an hour later: %+v, want the LLM's", ans)
	}
}

func TestUserCallsAreCountedPerShopUserAndHour(t *testing.T) {
	t.Parallel()
	lim := answer.NewLimiter(openRedis(t), randomPrefix())
	ctx := context.Background()
	at := time.Date(2025, 11, 11, 0, 30, 0, 0, time.UTC)
	var wg sync.WaitGroup
	var taken atomic.Int64
	for range 20 {
		wg.Go(func() {
			if lim.TakeCall(ctx, "s", "u", at, 5) {
				taken.Add(1)
			}
		})
	}
	wg.Wait()
	if taken.Load() != 5 {
		t.Errorf("%d of 20 concurrent calls taken under a cap of 5", taken.Load())
	}
	for _, other := range []struct {
		shop, user string
		at         time.Time
	}{{"s", "v", at}, {"t", "u", at}, {"s", "u", at.Add(time.Hour)}} {
		if !lim.TakeCall(ctx, other.shop, other.user, other.at, 5) {
			t.Errorf("%+v shares u's count", other)
		}
	}
}

// TestOneShopsFailingKeyFallsBackWhileAnotherShopIsAnswered: two shops bring
// their own keys for the same provider and models. The provider refuses
// shop A's key; A's breakers open and its customers get the FAQ or a
// handoff without further calls, while shop B keeps getting LLM answers.
func TestOneShopsFailingKeyFallsBackWhileAnotherShopIsAnswered(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{KeyErrors: map[string]int{"sk-shop-a": 401}}, nil)
	ctx := context.Background()
	const shopB = "shop2"
	if err := b.db.EnsureShop(ctx, shopB, shopB); err != nil {
		t.Fatal(err)
	}
	for s, key := range map[string]string{shop: "sk-shop-a", shopB: "sk-shop-b"} {
		if err := b.db.SetShopLLMSettings(ctx, storage.LLMSettings{ShopID: s, APIKey: key}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		ans := mustAnswer(t, a, inConversation(request(b.clock, faqQuestion), "a"))
		if ans.Source != peakdesk.SourceFAQ {
			t.Errorf("shop A's answer %d: %+v, want the FAQ", i, ans)
		}
		reqB := inConversation(request(b.clock, otherQuestion), "b")
		reqB.Shop = shopB
		if ans := mustAnswer(t, a, reqB); ans.Source != peakdesk.SourceLLM || ans.Model != "primary" {
			t.Errorf("shop B's answer %d: %+v, want the primary model's", i, ans)
		}
	}
	// Three refused calls per model open shop A's breakers; then no more.
	st := b.sim.Stats()
	if got := st.ByKey[llm.KeyFingerprint("sk-shop-a")]; got != 6 {
		t.Errorf("provider saw %d calls with shop A's key, want 6 (3 per model, then the breakers are open)", got)
	}
	if got := st.ByKey[llm.KeyFingerprint("sk-shop-b")]; got != 6 {
		t.Errorf("provider saw %d calls with shop B's key, want 6", got)
	}
}
