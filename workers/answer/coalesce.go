package answer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/bsm/redislock"

	"github.com/peakdesk/peakdesk"
)

// Burst coalescing. At midnight thousands of customers ask "双11满减怎么算？"
// within seconds. A general question — no history, no personal data, no
// order number, not urgent — is answered once per burst:
//
//   - in the process, the first request for a key runs the flight and the
//     others wait for its answer;
//   - across processes, the flight's runner takes a Redis leader lease
//     (redislock, 3 s, renewed while it answers); the leader answers and
//     stores the result, the others poll for it (5 → 50 ms). A leader that
//     crashed lets its lease lapse and the next follower takes over; one that
//     gave up says so; if no result comes within CoalesceWait (at most half
//     the time to the deadline) a follower answers on its own;
//   - an LLM answer stays in a Redis cache for CacheTTL, so the tail of the
//     burst is answered from it (source "cache").
//
// Followers of an LLM answer get source "cache" and no token cost; followers
// of a FAQ or handoff answer get that source, since that is what it is.

// shared is an answer as shared between the requests of one burst.
type shared struct {
	Text   string `json:"text"`
	Source string `json:"source"`
	Model  string `json:"model,omitempty"`
}

func share(a *Answer) *shared {
	// An answer capped for its own user is not the burst's: the others
	// answer on their own.
	if a == nil || a.Capped == CapUserCalls {
		return nil
	}
	return &shared{Text: a.Text, Source: a.Source, Model: a.Model}
}

// forFollower is the Answer a request gets from someone else's answer.
func (s *shared) forFollower() *Answer {
	a := &Answer{Text: s.Text, Source: s.Source, Model: s.Model}
	switch s.Source {
	case peakdesk.SourceLLM, peakdesk.SourceLLMSecondary, peakdesk.SourceCache:
		a.Source = peakdesk.SourceCache
	case peakdesk.SourceHandoff:
		a.Handoff = true
	}
	return a
}

func (s *shared) cacheable() bool {
	return s.Source == peakdesk.SourceLLM || s.Source == peakdesk.SourceLLMSecondary
}

// flight is one in-process answer to a coalesced question.
type flight struct {
	done chan struct{}
	ans  *shared // nil when the runner got no answer (its request was cancelled)
}

// coalesced answers a coalescable turn. It returns nil only when ctx is
// cancelled.
func (a *Answerer) coalesced(ctx context.Context, key string, t turn) *Answer {
	// 1. In the process: join the flight for key, or run it.
	a.flightsMu.Lock()
	if f, ok := a.flights[key]; ok {
		a.flightsMu.Unlock()
		// The runner answers by the deadline whatever happens (it stops
		// waiting for other processes after followWait), so wait for it
		// until then rather than stampede the provider.
		wait := time.NewTimer(max(t.deadline.Sub(a.cfg.Clock.Now()), 0))
		defer wait.Stop()
		select {
		case <-f.done:
			if f.ans != nil {
				a.metrics.coalesce.WithLabelValues("local_follower").Inc()
				return f.ans.forFollower()
			}
		case <-wait.C:
			a.metrics.coalesce.WithLabelValues("timeout").Inc()
		case <-ctx.Done():
			return nil
		}
		return a.compose(ctx, t)
	}
	f := &flight{done: make(chan struct{})}
	a.flights[key] = f
	a.flightsMu.Unlock()
	defer func() {
		a.flightsMu.Lock()
		delete(a.flights, key)
		a.flightsMu.Unlock()
		close(f.done)
	}()

	// 2. Across processes.
	ans, s := a.acrossProcesses(ctx, key, t)
	f.ans = s
	return ans
}

// leaseTTL is the life of a leader key: the leader renews it every third of
// it while it answers, so a crashed leader's key lapses within leaseTTL and
// a follower takes over.
const leaseTTL = 3 * time.Second

// acrossProcesses answers from the cache, as the burst's leader, or as a
// follower of another process's leader. It returns the answer for this
// request and what to share with the flight's followers.
func (a *Answerer) acrossProcesses(ctx context.Context, key string, t turn) (*Answer, *shared) {
	deadline := time.Now().Add(a.followWait(t.deadline))
	for round, pause := 0, 5*time.Millisecond; ; round, pause = round+1, min(2*pause, 50*time.Millisecond) {
		// 1. An answer already there: the cache, or the result of the
		// burst's leader.
		s, err := a.lookup(ctx, key)
		switch {
		case ctx.Err() != nil:
			return nil, nil
		case err != nil:
			// Redis is unreachable: answer alone.
			a.metrics.coalesce.WithLabelValues("alone").Inc()
			ans := a.compose(ctx, t)
			return ans, share(ans)
		case s != nil && s.Source != "":
			if round == 0 {
				a.metrics.coalesce.WithLabelValues("cache_hit").Inc()
			}
			return s.forFollower(), s
		case s != nil:
			// The leader gave up (its request was cancelled): answer alone.
			ans := a.compose(ctx, t)
			return ans, share(ans)
		}

		// 2. Lead: the first to ask, or the next after a leader vanished.
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		lease, err := a.locks.Obtain(lctx, a.leadKey(key), leaseTTL, nil)
		cancel()
		if err == nil {
			return a.lead(ctx, key, lease, t)
		}
		if round == 0 {
			a.metrics.coalesce.WithLabelValues("follower").Inc()
		}

		// 3. Follow: poll until the leader's result comes or waiting
		// longer would cost the customer their deadline.
		if time.Now().Add(pause).After(deadline) {
			a.metrics.coalesce.WithLabelValues("timeout").Inc()
			ans := a.compose(ctx, t)
			return ans, share(ans)
		}
		if peakdesk.Sleep(ctx, pause) != nil {
			return nil, nil
		}
	}
}

// lookup returns the cached answer for key, or else the result its leader
// published; nil when there is neither.
func (a *Answerer) lookup(ctx context.Context, key string) (*shared, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	vals, err := a.cfg.Redis.MGet(ctx, a.cacheKey(key), a.resultKey(key)).Result()
	if err != nil {
		return nil, err
	}
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var s shared
		if err := json.Unmarshal([]byte(str), &s); err == nil {
			return &s, nil
		}
	}
	return nil, nil
}

// lead answers as the burst's leader, keeping its lease alive meanwhile,
// and publishes the result.
func (a *Answerer) lead(ctx context.Context, key string, lease *redislock.Lock, t turn) (*Answer, *shared) {
	// A leader elected just after the previous one published must not ask
	// again.
	if s, err := a.lookup(ctx, key); err == nil && s != nil && s.Source != "" {
		release(ctx, lease)
		a.metrics.coalesce.WithLabelValues("follower").Inc()
		return s.forFollower(), s
	}
	a.metrics.coalesce.WithLabelValues("leader").Inc()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(leaseTTL / 3)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = lease.Refresh(rctx, leaseTTL, nil)
				cancel()
			}
		}
	})
	ans := a.compose(ctx, t)
	close(stop)
	wg.Wait()
	s := share(ans)
	a.publish(ctx, key, s)
	release(ctx, lease)
	return ans, s
}

// followWait is how long a follower waits for the leader: CoalesceWait, but
// at most half the time left, so that it can still answer on its own.
func (a *Answerer) followWait(deadline time.Time) time.Duration {
	return max(min(a.cfg.CoalesceWait, deadline.Sub(a.cfg.Clock.Now())/2), 0)
}

// publish stores the leader's result for the followers (and, for an LLM
// answer, in the cache). A nil result tells the followers to answer on their
// own.
func (a *Answerer) publish(ctx context.Context, key string, s *shared) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	res := s
	if res == nil {
		res = &shared{}
	}
	b, _ := json.Marshal(res)
	pipe := a.cfg.Redis.TxPipeline()
	pipe.Set(ctx, a.resultKey(key), b, max(2*a.cfg.CoalesceWait, time.Second))
	if s != nil && s.cacheable() && a.cfg.CacheTTL > 0 {
		pipe.Set(ctx, a.cacheKey(key), b, a.cfg.CacheTTL)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		a.log.Warn("coalesced answer not shared; followers will answer on their own", "err", err)
	}
}

// release gives up the leader lease if it is still ours (a lapsed one may
// be another leader's now: redislock releases only its own).
func release(ctx context.Context, lease *redislock.Lock) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = lease.Release(ctx)
}

func (a *Answerer) cacheKey(key string) string  { return a.cfg.KeyPrefix + "ans:cache:" + key }
func (a *Answerer) leadKey(key string) string   { return a.cfg.KeyPrefix + "ans:lead:" + key }
func (a *Answerer) resultKey(key string) string { return a.cfg.KeyPrefix + "ans:result:" + key }

// personalMarkers make a question about the customer's own order or
// account, whose answer must not be shared.
var personalMarkers = []string{
	"我的", "我买", "我下单", "我订", "我家", "我账号", "我账户", "订单号", "单号", "运单", "#",
	"my ", "mine", "i ordered", "i bought", "i paid", "order number", "account",
}

// coalesceKey returns the coalescing key of a general question, or false
// when the question is personal, urgent, part of a conversation or long, or
// offers tools (whose calls act for this customer alone) or an order answer.
func (a *Answerer) coalesceKey(req Request, question string, masked map[string]int) (string, bool) {
	if len(req.Tools) > 0 || req.CallTool != nil || req.Orders != nil ||
		len(req.History) > 0 || len(masked) > 0 || req.Priority == peakdesk.P0 ||
		utf8.RuneCountInString(question) > 200 {
		return "", false
	}
	lower := strings.ToLower(question)
	for _, m := range personalMarkers {
		if strings.Contains(lower, m) {
			return "", false
		}
	}
	norm := normalise(question)
	if norm == "" || hasDigitRun(norm, 5) {
		return "", false
	}
	sum := sha256.Sum256([]byte(req.Shop + "\x00" + norm))
	return req.Shop + ":" + hex.EncodeToString(sum[:16]), true
}

// normalise folds width and case and drops spaces, punctuation and symbols,
// so that "双11满减怎么算？" and "双１１ 满减怎么算?" are one question.
func normalise(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == 0x3000:
			continue
		case r >= 0xFF01 && r <= 0xFF5E:
			r -= 0xFEE0
		}
		if unicode.IsSpace(r) || unicode.IsPunct(r) || unicode.IsSymbol(r) || unicode.IsControl(r) {
			continue
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

func hasDigitRun(s string, n int) bool {
	run := 0
	for _, r := range s {
		if r >= '0' && r <= '9' {
			if run++; run >= n {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}
