package answer_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/faq"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/pii"
)

const shop = "shop1"

// bodies records the request bodies a provider receives, then hands the
// request on to it.
type bodies struct {
	next http.Handler
	mu   sync.Mutex
	seen []string
}

func (b *bodies) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data, _ := io.ReadAll(r.Body)
	b.mu.Lock()
	b.seen = append(b.seen, string(data))
	b.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(data))
	b.next.ServeHTTP(w, r)
}

func (b *bodies) all() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.seen, "\n")
}

// byModel sends each chat request to the simulator of the model it names,
// so that one model can fail while another answers.
func byModel(sims map[string]*llmsim.Sim) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		var req struct {
			Model string `json:"model"`
		}
		_ = json.Unmarshal(data, &req)
		sim, ok := sims[req.Model]
		if !ok {
			http.Error(w, `{"error":{"message":"no such model","type":"invalid_request_error","code":"model_not_found"}}`, 404)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(data))
		sim.ServeHTTP(w, r)
	})
}

// bundle is one test's world: a fresh database with shop1 and its FAQ,
// Redis under a key prefix of its own, a simulated provider and a clock.
type bundle struct {
	db     *storage.DB
	sim    *llmsim.Sim
	url    string
	bodies *bodies
	clock  *storagetest.Clock
	prefix string
	cfg    answer.Config
}

// setup returns a started Answerer on a simulated provider with faults f,
// models "primary" then "secondary".
func setup(t testing.TB, f llmsim.Faults, mod func(*answer.Config)) (*answer.Answerer, *bundle) {
	t.Helper()
	b := &bundle{db: storagetest.DB(t), sim: llmsim.New(f), clock: storagetest.NewClock(), prefix: randomPrefix()}
	b.bodies = &bodies{next: b.sim}
	srv := httptest.NewServer(b.bodies)
	t.Cleanup(srv.Close)
	b.url = srv.URL + "/v1"
	seedFAQ(t, b.db)
	b.cfg = answer.Config{
		DB:         b.db,
		Provider:   llm.Provider{BaseURL: b.url, APIKey: "test-key", Models: []string{"primary", "secondary"}},
		Prices:     llm.Prices{"primary": {InputPerMTok: 2, OutputPerMTok: 8}, "secondary": {InputPerMTok: 0.5, OutputPerMTok: 1}},
		LLM:        llm.CallerConfig{CallTimeout: 5 * time.Second, RetryStep: time.Second},
		KeyPrefix:  b.prefix,
		Clock:      b.clock,
		FAQRefresh: 50 * time.Millisecond,
		Logger:     slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&b.cfg)
	}
	return newAnswerer(t, b.cfg), b
}

// newAnswerer starts an Answerer for cfg with a Redis client and a metrics
// registry of its own, as a separate process would have.
func newAnswerer(t testing.TB, cfg answer.Config) *answer.Answerer {
	t.Helper()
	cfg.Redis = openRedis(t)
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	a, err := answer.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

func seedFAQ(t testing.TB, db *storage.DB) {
	t.Helper()
	ctx := context.Background()
	if err := db.EnsureShop(ctx, shop, shop); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("testdata/faq.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := faq.Parse(f.Name(), f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ImportFAQ(ctx, shop, entries, false); err != nil {
		t.Fatal(err)
	}
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

var msgSeq struct {
	sync.Mutex
	n int
}

// request is a p1 question without history, due in 10 s on clock.
func request(clock *storagetest.Clock, question string) answer.Request {
	msgSeq.Lock()
	msgSeq.n++
	n := msgSeq.n
	msgSeq.Unlock()
	return answer.Request{Shop: shop, ConversationID: fmt.Sprintf("%032x", n), MessageIDs: []string{fmt.Sprintf("%032x", n)},
		Priority: peakdesk.P1, Deadline: clock.Now().Add(10 * time.Second), Question: question}
}

func mustAnswer(t testing.TB, a *answer.Answerer, req answer.Request) *answer.Answer {
	t.Helper()
	ans, err := a.Answer(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return ans
}

func TestAnswerFromThePrimaryModelWithItsCost(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, nil)
	ans := mustAnswer(t, a, request(b.clock, "满减可以跨店凑吗？"))
	if ans.Source != peakdesk.SourceLLM || ans.Model != "primary" || ans.Handoff || ans.StreamBroken {
		t.Fatalf("answer %+v, want the primary model's", ans)
	}
	if !strings.Contains(ans.Text, "满减可以跨店凑吗") {
		t.Errorf("text %q does not answer the question", ans.Text)
	}
	if ans.PromptTokens == 0 || ans.CompletionTokens == 0 {
		t.Fatalf("no token usage: %+v", ans)
	}
	// $2 and $8 per million tokens: 2 µ$ per prompt token, 8 per completion token.
	if want := int64(2*ans.PromptTokens + 8*ans.CompletionTokens); ans.CostMicroUSD != want {
		t.Errorf("cost %d µ$, want %d", ans.CostMicroUSD, want)
	}
	// The FAQ entries closest to the question go to the model as context.
	if sent := b.bodies.all(); !strings.Contains(sent, "每满300减50") {
		t.Errorf("no FAQ context in the prompt: %s", sent)
	}
}

func TestAnswerStreamsDeltas(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{ChunkDelay: time.Millisecond}, nil)
	var got strings.Builder
	n := 0
	req := request(b.clock, "有什么推荐的礼物吗？")
	req.OnDelta = func(s string) { got.WriteString(s); n++ }
	ans := mustAnswer(t, a, req)
	if ans.Source != peakdesk.SourceLLM || ans.StreamBroken {
		t.Fatalf("answer %+v", ans)
	}
	if n < 2 || got.String() != ans.Text {
		t.Errorf("%d deltas %q, answer %q", n, got.String(), ans.Text)
	}
	if ans.PromptTokens == 0 {
		t.Error("streamed answer has no usage")
	}
}

func TestSecondaryModelWhenThePrimaryFails(t *testing.T) {
	t.Parallel()
	primary := llmsim.New(llmsim.Faults{Outage: true})
	secondary := llmsim.New(llmsim.Faults{})
	srv := httptest.NewServer(byModel(map[string]*llmsim.Sim{"primary": primary, "secondary": secondary}))
	t.Cleanup(srv.Close)
	a, b := setup(t, llmsim.Faults{}, func(c *answer.Config) { c.Provider.BaseURL = srv.URL + "/v1" })

	ans := mustAnswer(t, a, request(b.clock, "今晚几点开始抢购？"))
	if ans.Source != peakdesk.SourceLLMSecondary || ans.Model != "secondary" {
		t.Fatalf("answer %+v, want the secondary model's", ans)
	}
	if p, s := primary.Stats().Requests, secondary.Stats().Requests; p != 3 || s != 1 {
		t.Errorf("primary saw %d calls (want 3: retried, then its breaker opened), secondary %d (want 1)", p, s)
	}
	// Priced at the secondary's price.
	if want := int64(ans.PromptTokens/2) + int64(ans.CompletionTokens); ans.CostMicroUSD < want-1 || ans.CostMicroUSD > want+1 {
		t.Errorf("cost %d µ$, want ≈ %d", ans.CostMicroUSD, want)
	}

	// The primary's breaker is open now: the next answer costs it nothing.
	waits := len(b.clock.Sleeps())
	ans = mustAnswer(t, a, request(b.clock, "明天还有优惠吗？"))
	if ans.Source != peakdesk.SourceLLMSecondary || primary.Stats().Requests != 3 {
		t.Errorf("answer %+v, primary calls %d: an open breaker must be skipped", ans, primary.Stats().Requests)
	}
	if got := len(b.clock.Sleeps()); got != waits {
		t.Errorf("an open breaker cost %d waits", got-waits)
	}
}

func TestFAQWhenTheLLMIsDownAndHandoffWhenNothingMatches(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{Outage: true}, nil)

	ans := mustAnswer(t, a, request(b.clock, "双11满减规则是怎样的"))
	if ans.Source != peakdesk.SourceFAQ || !strings.Contains(ans.Text, "每满300减50") || ans.Handoff {
		t.Fatalf("answer %+v, want the 满减 FAQ entry", ans)
	}
	if ans.PromptTokens != 0 || ans.CostMicroUSD != 0 {
		t.Errorf("a FAQ answer costs nothing: %+v", ans)
	}
	calls := b.sim.Stats().Requests // 3 per model, then both breakers are open

	for _, tc := range []struct{ q, want string }{
		{"你们老板叫什么名字", "人工客服"},
		{"what is the meaning of life", "human agent"},
	} {
		ans := mustAnswer(t, a, request(b.clock, tc.q))
		if ans.Source != peakdesk.SourceHandoff || !ans.Handoff || !strings.Contains(ans.Text, tc.want) {
			t.Errorf("%q: answer %+v, want a handoff in the customer's language", tc.q, ans)
		}
	}
	if got := b.sim.Stats().Requests; got != calls || calls != 6 {
		t.Errorf("provider saw %d calls, then %d more with both breakers open; want 6 and 0", calls, got-calls)
	}
}

func TestStreamCutMidwayEndsWithTheFallbackAnswer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		models []string
		source string
	}{
		{"secondary model", []string{"primary", "secondary"}, peakdesk.SourceLLMSecondary},
		{"faq", []string{"primary"}, peakdesk.SourceFAQ},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := setup(t, llmsim.Faults{StreamCutRate: 1, ChunkDelay: time.Millisecond},
				func(c *answer.Config) { c.Provider.Models = tc.models })
			var partial strings.Builder
			req := request(b.clock, "双11满减活动怎么算？")
			req.OnDelta = func(s string) { partial.WriteString(s) }
			ans := mustAnswer(t, a, req)
			if ans.Source != tc.source || !ans.StreamBroken {
				t.Fatalf("answer %+v, want %s with StreamBroken", ans, tc.source)
			}
			if partial.Len() == 0 || partial.String() == ans.Text {
				t.Errorf("partial %q, answer %q: the fallback must replace a partial text", partial.String(), ans.Text)
			}
			st := b.sim.Stats()
			if st.StreamsCut != 1 || st.Streams != 1 {
				t.Errorf("stats %+v: one stream, cut, and no second stream after the cut", st)
			}
		})
	}
}

func TestRetryAfterBeyondTheDeadlineFallsBackAtOnce(t *testing.T) {
	t.Parallel()
	f := llmsim.Faults{ErrorRate: 1, ErrorStatuses: map[int]float64{429: 1}, RetryAfter: 20 * time.Second}
	a, b := setup(t, f, nil)
	req := request(b.clock, "双11满减活动怎么算？")
	req.Deadline = b.clock.Now().Add(5 * time.Second)
	ans := mustAnswer(t, a, req)
	if ans.Source != peakdesk.SourceFAQ {
		t.Errorf("answer %+v, want the FAQ", ans)
	}
	if got := b.sim.Stats().Requests; got != 2 {
		t.Errorf("provider saw %d calls, want 2 (one per model, no retry)", got)
	}
	if s := b.clock.Sleeps(); len(s) != 0 {
		t.Errorf("waited %v for a Retry-After past the deadline", s)
	}

	// Within the deadline the wait is honoured in full.
	b.sim.SetFaults(llmsim.Faults{ErrorRate: 1, ErrorStatuses: map[int]float64{429: 1}, RetryAfter: 2 * time.Second})
	b.sim.ResetStats()
	req = request(b.clock, "今晚几点开始抢购？")
	req.Deadline = b.clock.Now().Add(60 * time.Second)
	mustAnswer(t, a, req)
	if s := b.clock.Sleeps(); len(s) == 0 || s[0] != 2*time.Second {
		t.Errorf("waits %v, want Retry-After's 2s", s)
	}
}

func TestPersonalDataIsMaskedBeforeTheLLMAndAudited(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{}, nil)
	history := []llm.Turn{{Role: llm.RoleUser, Text: "我的邮箱是 li.si@example.com"}, {Role: llm.RoleAssistant, Text: "好的"}}
	req := request(b.clock, "请联系我 13812345678，身份证 11010519491231002X")
	req.History = history
	ans := mustAnswer(t, a, req)

	sent := b.bodies.all()
	for _, raw := range []string{"13812345678", "11010519491231002X", "li.si@example.com"} {
		if strings.Contains(sent, raw) || strings.Contains(ans.Text, raw) {
			t.Errorf("%s reached the LLM or the reply", raw)
		}
	}
	if !strings.Contains(sent, "138****5678") || !strings.Contains(ans.Text, "138****5678") {
		t.Errorf("masked phone missing: sent %s, answer %q", sent, ans.Text)
	}
	// The question's masks are counted; the history's were counted before.
	want := map[string]int{pii.Phone: 1, pii.IDCard: 1}
	if len(ans.Masked) != len(want) || ans.Masked[pii.Phone] != 1 || ans.Masked[pii.IDCard] != 1 {
		t.Errorf("masked %v, want %v", ans.Masked, want)
	}
	audits, err := b.db.PIIAudits(context.Background(), shop, req.MessageIDs[0], 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(audits) != 1 || audits[0].Counts[pii.Phone] != 1 || audits[0].Counts[pii.IDCard] != 1 {
		t.Errorf("audit records %+v", audits)
	}
}

func TestShopSettingsOverrideTheDefaultProvider(t *testing.T) {
	t.Parallel()
	other := llmsim.New(llmsim.Faults{})
	srv := httptest.NewServer(other)
	t.Cleanup(srv.Close)
	a, b := setup(t, llmsim.Faults{}, nil)
	if err := b.db.SetShopLLMSettings(context.Background(), storage.LLMSettings{ShopID: shop,
		BaseURL: srv.URL + "/v1", Models: []string{"shop-model"}}); err != nil {
		t.Fatal(err)
	}
	ans := mustAnswer(t, a, request(b.clock, "今晚几点开始抢购？"))
	if ans.Model != "shop-model" || ans.Source != peakdesk.SourceLLM {
		t.Errorf("answer %+v, want the shop's own model", ans)
	}
	if other.Stats().Requests != 1 || b.sim.Stats().Requests != 0 {
		t.Errorf("shop's provider saw %d calls, default %d", other.Stats().Requests, b.sim.Stats().Requests)
	}
}

func TestBurstOfIdenticalQuestionsCostsAHandfulOfCalls(t *testing.T) {
	t.Parallel()
	const n = 200
	a1, b := setup(t, llmsim.Faults{Latency: 200 * time.Millisecond}, nil)
	a2 := newAnswerer(t, b.cfg) // a second process on the same Redis
	sources := map[string]int{}
	texts := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		a := a1
		if i%2 == 1 {
			a = a2
		}
		q := "双11满减怎么算？"
		if i%3 == 0 {
			q = "双 11 满减怎么算?" // normalised to the same question
		}
		wg.Go(func() {
			ans, err := a.Answer(context.Background(), request(b.clock, q))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			sources[ans.Source]++
			texts[ans.Text] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	calls := b.sim.Stats().Requests
	t.Logf("%d identical questions over 2 processes: %d LLM calls; sources %v", n, calls, sources)
	if calls > 3 {
		t.Errorf("%d LLM calls for one burst, want at most a handful (3)", calls)
	}
	if len(texts) != 1 || sources[peakdesk.SourceLLM] < 1 || sources[peakdesk.SourceLLM]+sources[peakdesk.SourceCache] != n {
		t.Errorf("sources %v, %d distinct texts: want one LLM answer shared as cache", sources, len(texts))
	}

	// The tail of the burst comes from the cache.
	ans := mustAnswer(t, a1, request(b.clock, "双11满减怎么算"))
	if ans.Source != peakdesk.SourceCache || ans.PromptTokens != 0 || b.sim.Stats().Requests != calls {
		t.Errorf("after the burst: %+v", ans)
	}
}

func TestPersonalQuestionsAreNotCoalesced(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{Latency: 50 * time.Millisecond}, nil)
	var wg sync.WaitGroup
	cases := []func() answer.Request{
		func() answer.Request { return request(b.clock, "我的订单12345678到哪了") },
		func() answer.Request { return request(b.clock, "我的快递到哪了") },
		func() answer.Request {
			r := request(b.clock, "那运费呢")
			r.History = []llm.Turn{{Role: llm.RoleUser, Text: "我想退货"}}
			return r
		},
		func() answer.Request {
			r := request(b.clock, "退款多久能到账")
			r.Priority = peakdesk.P0
			return r
		},
	}
	for _, mk := range cases {
		for range 3 {
			wg.Go(func() {
				if ans := mustAnswer(t, a, mk()); ans.Source != peakdesk.SourceLLM {
					t.Errorf("answer %+v, want its own LLM answer", ans)
				}
			})
		}
	}
	wg.Wait()
	if got := b.sim.Stats().Requests; got != int64(3*len(cases)) {
		t.Errorf("%d LLM calls, want %d: personal questions are answered one by one", got, 3*len(cases))
	}
}

func TestAnswerReturnsOnlyWhenCancelled(t *testing.T) {
	t.Parallel()
	a, b := setup(t, llmsim.Faults{Hang: true}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if ans, err := a.Answer(ctx, request(b.clock, "今晚几点开始抢购？")); err == nil {
		t.Errorf("cancelled request answered %+v", ans)
	}
	if _, err := a.Answer(context.Background(), answer.Request{Question: "x"}); err == nil {
		t.Error("a request without a shop was answered")
	}
}

func TestNewValidatesTheConfig(t *testing.T) {
	t.Parallel()
	db := storagetest.DB(t)
	rdb := openRedis(t)
	good := llm.Provider{BaseURL: "http://127.0.0.1:1/v1", Models: []string{"m"}}
	for name, tc := range map[string]struct {
		cfg   answer.Config
		field string
	}{
		"no db":     {answer.Config{Redis: rdb, Provider: good}, "DB"},
		"no redis":  {answer.Config{DB: db, Provider: good}, "Redis"},
		"no models": {answer.Config{DB: db, Redis: rdb, Provider: llm.Provider{BaseURL: "http://x"}}, "Models"},
		"no url":    {answer.Config{DB: db, Redis: rdb, Provider: llm.Provider{Models: []string{"m"}}}, "BaseURL"},
		"bad ratio": {answer.Config{DB: db, Redis: rdb, Provider: good, LLM: llm.CallerConfig{BreakerRatio: 2}}, "BreakerRatio"},
	} {
		if _, err := answer.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: err = %v, want one naming %s", name, err, tc.field)
		}
	}
}

func TestFollowersAnswerThemselvesWhenTheLeaderGivesUp(t *testing.T) {
	t.Parallel()
	// Followers would wait up to 30 s for a leader that never answers; the
	// leader's call would take a minute (it is cut short by its customer).
	a1, b := setup(t, llmsim.Faults{Latency: time.Minute},
		func(c *answer.Config) { c.CoalesceWait = 30 * time.Second })
	reg := prometheus.NewRegistry()
	cfg := b.cfg
	cfg.Registerer = reg
	a2 := newAnswerer(t, cfg)
	rdb := openRedis(t)
	q := "直播间的福袋怎么抢？"

	// The leader's customer goes away mid-call, once a follower in another
	// process waits for it.
	leaderCtx, leave := context.WithCancel(context.Background())
	defer leave()
	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		if _, err := a1.Answer(leaderCtx, request(b.clock, q)); err == nil {
			t.Error("the cancelled leader answered")
		}
	}()
	storagetest.WaitFor(t, "the leader key", 30*time.Second, func() bool {
		keys, _ := rdb.Keys(context.Background(), b.prefix+"ans:lead:*").Result()
		return len(keys) == 1
	})
	// Mid-call: the leader's call has reached the provider.
	storagetest.WaitFor(t, "the leader's call", 30*time.Second, func() bool { return b.sim.Stats().Requests == 1 })

	// The follower learns that the leader gave up and answers itself,
	// without waiting CoalesceWait out.
	req := request(b.clock, q)
	req.Deadline = b.clock.Now().Add(2 * time.Minute)
	type result struct {
		ans *answer.Answer
		err error
	}
	answered := make(chan result, 1)
	go func() {
		ans, err := a2.Answer(context.Background(), req)
		answered <- result{ans, err}
	}()
	storagetest.WaitFor(t, "a follower", 30*time.Second, func() bool { return coalesceCount(t, reg, "follower") == 1 })
	b.sim.SetFaults(llmsim.Faults{}) // the follower's own call is quick
	leave()
	res := <-answered
	if res.err != nil {
		t.Fatal(res.err)
	}
	ans := res.ans
	<-leaderDone
	if ans.Source != peakdesk.SourceLLM {
		t.Errorf("follower's answer %+v, want its own LLM answer", ans)
	}
	if f, to := coalesceCount(t, reg, "follower"), coalesceCount(t, reg, "timeout"); f != 1 || to != 0 {
		t.Errorf("follower %v, timeout %v: want a follower that did not time out", f, to)
	}
	if got := b.sim.Stats().Requests; got != 2 {
		t.Errorf("%d LLM calls, want 2 (the abandoned one and the follower's)", got)
	}
}

// coalesceCount reads peakdesk_coalesce_total{role} from reg.
func coalesceCount(t *testing.T, reg *prometheus.Registry, role string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "peakdesk_coalesce_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "role" && l.GetValue() == role {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestAFollowerTakesOverFromACrashedLeader(t *testing.T) {
	t.Parallel()
	_, b := setup(t, llmsim.Faults{}, func(c *answer.Config) { c.CoalesceWait = time.Minute })
	reg := prometheus.NewRegistry()
	cfg := b.cfg
	cfg.Registerer = reg
	a := newAnswerer(t, cfg)
	req := request(b.clock, "直播间的福袋怎么抢？")
	req.Deadline = b.clock.Now().Add(2 * time.Minute)
	key, ok := a.LeaderKey(req)
	if !ok {
		t.Fatal("a general question is not coalesced")
	}
	// A leader that died holding its lease: the key lapses, nobody answers.
	rdb := openRedis(t)
	if err := rdb.Set(context.Background(), key, "dead process", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	ans := mustAnswer(t, a, req)
	if ans.Source != peakdesk.SourceLLM {
		t.Errorf("answer %+v, want the LLM's after taking over", ans)
	}
	if f, l, to := coalesceCount(t, reg, "follower"), coalesceCount(t, reg, "leader"), coalesceCount(t, reg, "timeout"); f != 1 || l != 1 || to != 0 {
		t.Errorf("follower %v, leader %v, timeout %v: want a follower that took the lapsed lead", f, l, to)
	}
}
