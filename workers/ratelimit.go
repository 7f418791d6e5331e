package workers

import (
	"cmp"
	"container/heap"
	"context"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/peakdesk/peakdesk"
)

// ProviderLimitConfig configures a ProviderLimiter.
type ProviderLimitConfig struct {
	// Redis holds the shared budget; nil keeps it local to this process.
	Redis *redis.Client
	// Key names the budget (one provider account and model). Default "default".
	Key string
	// RPM and TPM are the provider's requests and tokens per minute, for all
	// worker processes together; 0 = unlimited.
	RPM, TPM int
	// Burst is how much of the budget may be spent at once, as a duration of
	// it. Providers allow about a second's worth; staying below that keeps
	// their limit from ever answering 429. Default 100 ms (at least one
	// request).
	Burst time.Duration
	// ProcessID names this process among the peers sharing the budget.
	ProcessID string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
}

// While Redis fails, the limiter asks it again every redisRetry; each ask
// gives up after redisTimeout.
const (
	redisRetry   = 5 * time.Second
	redisTimeout = 250 * time.Millisecond
)

// ProviderLimiter keeps the LLM calls of every worker process within the
// provider's requests- and tokens-per-minute limits. The budget lives in
// Redis (GCRA, redis_rate), so processes share it however many there are.
// Within a process one caller at a time draws from it, the most urgent
// priority first. When Redis fails, the process falls back to its share of
// the budget (the budget divided by the peers it last saw in Redis) with a
// local limiter, and tries Redis again every few seconds: the desk keeps
// answering, slightly below the limit.
//
// Tokens are not known before a call: a call reserves an estimate and
// settles the difference on the next reservation, so over time the budget
// is charged what the provider counted.
type ProviderLimiter struct {
	cfg     ProviderLimitConfig
	log     *slog.Logger
	redis   *redis_rate.Limiter
	reqLim  redis_rate.Limit
	tokLim  redis_rate.Limit
	limited bool

	// The line of callers; one of them (the holder of the baton) draws from
	// the budget while the others wait.
	mu      sync.Mutex
	busy    bool
	line    waitLine
	seq     uint64
	debt    float64 // tokens charged too few (negative: too many) so far
	ratio   float64 // actual/estimated tokens, smoothed
	peers   int
	peersAt time.Time
	// local fallback, while Redis is failing
	localUntil time.Time
	localReq   *rate.Limiter
	localTok   *rate.Limiter

	// Waited observes how long callers waited for the budget (optional).
	Waited func(priority peakdesk.Priority, d time.Duration)
	// Degraded reports a switch to or from the local fallback (optional).
	Degraded func(local bool)
}

// NewProviderLimiter returns a limiter for cfg.
func NewProviderLimiter(cfg ProviderLimitConfig) *ProviderLimiter {
	cfg.Key = cmp.Or(cfg.Key, "default")
	cfg.Burst = cmp.Or(cfg.Burst, 100*time.Millisecond)
	cfg.ProcessID = cmp.Or(cfg.ProcessID, newID())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &ProviderLimiter{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()), ratio: 1, peers: 1}
	if cfg.Redis != nil {
		l.redis = redis_rate.NewLimiter(cfg.Redis)
	}
	burst := func(perMinute int) int {
		return max(1, int(math.Ceil(float64(perMinute)*cfg.Burst.Seconds()/60)))
	}
	if cfg.RPM > 0 {
		l.reqLim = redis_rate.Limit{Rate: cfg.RPM, Period: time.Minute, Burst: burst(cfg.RPM)}
	}
	if cfg.TPM > 0 {
		l.tokLim = redis_rate.Limit{Rate: cfg.TPM, Period: time.Minute, Burst: burst(cfg.TPM)}
	}
	l.limited = cfg.RPM > 0 || cfg.TPM > 0
	return l
}

// Permit is one admitted call; Done settles its tokens.
type Permit struct {
	l        *ProviderLimiter
	reserved float64
}

// Done tells the limiter how many tokens the call used (prompt plus
// completion; 0 if it failed before the provider counted any; negative if
// unknown: the estimate stands).
func (p *Permit) Done(tokens int) {
	if p == nil || p.l == nil || p.l.tokLim.IsZero() || tokens < 0 {
		return
	}
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.debt += float64(tokens) - p.reserved
	if tokens > 0 && p.reserved > 0 {
		l.ratio += 0.1 * (float64(tokens)/(p.reserved/l.ratio) - l.ratio)
		l.ratio = min(max(l.ratio, 0.1), 10)
	}
}

// Wait blocks until a call of priority prio with about estTokens tokens fits
// the budget, and returns its permit. Callers of more urgent priority go
// first.
func (l *ProviderLimiter) Wait(ctx context.Context, prio peakdesk.Priority, estTokens int) (*Permit, error) {
	if l == nil || !l.limited {
		return &Permit{}, nil
	}
	start := l.cfg.Now()
	if err := l.join(ctx, prio); err != nil {
		return nil, err
	}
	defer l.pass()

	// Reserve the estimate plus whatever earlier calls left unsettled.
	l.mu.Lock()
	reserve := float64(estTokens) * l.ratio
	charge := reserve + l.debt
	if charge < 0 {
		l.debt, charge = charge, 0
	} else {
		l.debt = 0
	}
	l.mu.Unlock()

	if !l.reqLim.IsZero() {
		if err := l.take(ctx, "rpm", l.reqLim, 1); err != nil {
			return nil, err
		}
	}
	if !l.tokLim.IsZero() && charge >= 1 {
		if err := l.take(ctx, "tpm", l.tokLim, int(math.Round(charge))); err != nil {
			return nil, err
		}
	}
	if l.Waited != nil {
		l.Waited(prio, l.cfg.Now().Sub(start))
	}
	return &Permit{l: l, reserved: reserve}, nil
}

// take draws n from one budget, in pieces no larger than its burst (GCRA
// never admits more than the burst at once), waiting as the budget says.
func (l *ProviderLimiter) take(ctx context.Context, name string, lim redis_rate.Limit, n int) error {
	for n > 0 {
		got, wait, err := l.try(ctx, name, lim, min(n, lim.Burst))
		if err != nil {
			return err
		}
		if got > 0 {
			n -= got
			continue
		}
		if err := peakdesk.Sleep(ctx, wait); err != nil {
			return err
		}
	}
	return nil
}

// try asks the shared budget for n, or the local share while Redis fails. It
// returns how much it got, or else how long to wait before asking again.
func (l *ProviderLimiter) try(ctx context.Context, name string, lim redis_rate.Limit, n int) (int, time.Duration, error) {
	now := l.cfg.Now()
	if l.redis != nil && !now.Before(l.localUntil) {
		// A slow Redis must not hold up the line: a short timeout, then
		// the local share.
		rctx, cancel := context.WithTimeout(ctx, redisTimeout)
		l.refreshPeers(rctx, now)
		res, err := l.redis.AllowN(rctx, "pd:llm:"+name+":"+l.cfg.Key, lim, n)
		cancel()
		if err == nil {
			if !l.localUntil.IsZero() {
				l.localUntil = time.Time{}
				l.log.Info("provider rate limit shared through Redis again")
				if l.Degraded != nil {
					l.Degraded(false)
				}
			}
			if res.Allowed > 0 {
				return n, 0, nil
			}
			return 0, max(res.RetryAfter, time.Millisecond), nil
		}
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
		if l.localUntil.IsZero() {
			l.log.Warn("provider rate limit: Redis failed; using this process's share locally",
				"peers", l.peers, "err", err)
			if l.Degraded != nil {
				l.Degraded(true)
			}
		}
		now = l.cfg.Now()
		l.localUntil = now.Add(redisRetry)
	}
	got, wait := l.tryLocal(name, lim, n, now)
	return got, wait, nil
}

// tryLocal is the fallback: this process's share of the budget.
func (l *ProviderLimiter) tryLocal(name string, lim redis_rate.Limit, n int, now time.Time) (int, time.Duration) {
	share := float64(max(l.Peers(), 1))
	lp := &l.localReq
	if name == "tpm" {
		lp = &l.localTok
	}
	perSec := float64(lim.Rate) / lim.Period.Seconds() / share
	if *lp == nil || (*lp).Limit() != rate.Limit(perSec) {
		*lp = rate.NewLimiter(rate.Limit(perSec), max(1, int(float64(lim.Burst)/share)))
	}
	n = min(n, (*lp).Burst())
	r := (*lp).ReserveN(now, n)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return 0, d
	}
	return n, 0
}

// refreshPeers notes this process in Redis and counts the live ones, every
// few seconds; the count sizes the local share if Redis fails later.
func (l *ProviderLimiter) refreshPeers(ctx context.Context, now time.Time) {
	if now.Sub(l.peersAt) < 5*time.Second {
		return
	}
	l.peersAt = now
	key := "pd:llm:peers:" + l.cfg.Key
	pipe := l.cfg.Redis.TxPipeline()
	pipe.ZAdd(ctx, key, redis.Z{Score: float64(now.Unix()), Member: l.cfg.ProcessID})
	pipe.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(now.Add(-15*time.Second).Unix(), 10))
	card := pipe.ZCard(ctx, key)
	pipe.Expire(ctx, key, time.Minute)
	if _, err := pipe.Exec(ctx); err == nil {
		l.mu.Lock()
		l.peers = max(int(card.Val()), 1)
		l.mu.Unlock()
	}
}

// Peers returns how many worker processes shared the budget when last seen.
func (l *ProviderLimiter) Peers() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peers
}

// join waits for the baton: callers line up by priority, then arrival.
func (l *ProviderLimiter) join(ctx context.Context, prio peakdesk.Priority) error {
	l.mu.Lock()
	if !l.busy {
		l.busy = true
		l.mu.Unlock()
		return nil
	}
	l.seq++
	w := &waiter{rank: prio.Rank(), seq: l.seq, ready: make(chan struct{}), index: -1}
	heap.Push(&l.line, w)
	l.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		if w.index >= 0 {
			heap.Remove(&l.line, w.index)
			l.mu.Unlock()
			return ctx.Err()
		}
		l.mu.Unlock()
		// The baton reached us as we gave up: pass it on.
		l.pass()
		return ctx.Err()
	}
}

// pass hands the baton to the next caller in line, or puts it down.
func (l *ProviderLimiter) pass() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.line.Len() == 0 {
		l.busy = false
		return
	}
	w := heap.Pop(&l.line).(*waiter)
	close(w.ready)
}

type waiter struct {
	rank  int
	seq   uint64
	ready chan struct{}
	index int
}

// waitLine is a heap of waiters, most urgent and then oldest first.
type waitLine []*waiter

func (h waitLine) Len() int { return len(h) }
func (h waitLine) Less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].seq < h[j].seq
}
func (h waitLine) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *waitLine) Push(x any) {
	w := x.(*waiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *waitLine) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	w.index = -1
	return w
}
