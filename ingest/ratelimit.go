package ingest

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/peakdesk/peakdesk"
)

// Limits are the request rates one shop and each of its end users may post
// at (GCRA: a rate and a burst).
type Limits struct {
	ShopPerSecond int
	ShopBurst     int
	UserPerMinute int
	UserBurst     int
}

// DefaultLimits apply to shops without their own.
var DefaultLimits = Limits{ShopPerSecond: 5000, ShopBurst: 10000, UserPerMinute: 60, UserBurst: 20}

// rateLimiter enforces Limits across every edge process through Redis
// (GCRA, redis_rate). When Redis fails it never fails closed: it switches to
// in-process limiters for a while and says so in a metric.
type rateLimiter struct {
	rdb       *redis.Client // the limiter's own client, see newRateLimiter
	redis     *redis_rate.Limiter
	scripts   redis.Scripter // rdb's autopipeliner when it has one
	degraded  atomic.Int64   // unix nanos until which Redis is skipped
	retryWait time.Duration

	mu      sync.Mutex
	local   map[string]*localLimiter
	windows map[string]*localWindow
	leases  map[string]*shopLease

	fallbacks prometheus.Counter
	mode      prometheus.Gauge
}

type localLimiter struct {
	lim  *rate.Limiter
	used time.Time
}

func newRateLimiter(rdb *redis.Client, fallbacks prometheus.Counter, mode prometheus.Gauge) *rateLimiter {
	l := &rateLimiter{retryWait: time.Second, local: map[string]*localLimiter{}, windows: map[string]*localWindow{},
		leases: map[string]*shopLease{}, fallbacks: fallbacks, mode: mode}
	if rdb != nil {
		// Concurrent requests' checks share Redis round trips: the blocking
		// autopipeliner sends whatever checks arrive while one batch is on
		// the wire as the next batch; a lone check goes out at once. A
		// queued check does not honour its context, so the limiter has a
		// client of its own whose short timeouts and lack of retries bound a
		// stalled Redis; the first failure switches to local limits.
		opt := *rdb.Options()
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = 200*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
		opt.MaxRetries = -1
		l.rdb = redis.NewClient(&opt)
		if ap, err := l.rdb.AutoPipeline(); err == nil {
			l.redis, l.scripts = redis_rate.NewLimiter(ap), ap
		} else {
			l.redis, l.scripts = redis_rate.NewLimiter(l.rdb), l.rdb
		}
	}
	return l
}

// close releases the limiter's Redis connections.
func (l *rateLimiter) close() {
	if l.rdb != nil {
		_ = l.rdb.Close()
	}
}

// allow checks the user's and then the shop's budget for one message. It
// returns a rate_limited error with Retry-After when either is spent.
func (l *rateLimiter) allow(ctx context.Context, shop, user string, lim Limits) error {
	limited := func(wait time.Duration) error {
		return &peakdesk.Error{Code: peakdesk.ERateLimited, Message: "too many messages, retry later",
			RetryAfter: max(wait, time.Second)}
	}
	if lim.UserPerMinute > 0 {
		userLimit := redis_rate.Limit{Rate: lim.UserPerMinute, Burst: lim.UserBurst, Period: time.Minute}
		if wait, ok := l.check(ctx, "u:"+shop+":"+user, userLimit); !ok {
			return limited(wait)
		}
	}
	if lim.ShopPerSecond > 0 {
		if wait, ok := l.takeShop(ctx, shop, lim); !ok {
			return limited(wait)
		}
	}
	return nil
}

// allowRead spends one of the user's reads (GET of a message or
// conversation, an event stream opened): perMinute a minute, in a burst of
// as many.
func (l *rateLimiter) allowRead(ctx context.Context, shop, user string, perMinute int) error {
	if perMinute <= 0 {
		return nil
	}
	limit := redis_rate.Limit{Rate: perMinute, Burst: perMinute, Period: time.Minute}
	if wait, ok := l.check(ctx, "r:"+shop+":"+user, limit); !ok {
		return &peakdesk.Error{Code: peakdesk.ERateLimited, Message: "too many reads, retry later",
			RetryAfter: max(wait, time.Second)}
	}
	return nil
}

// p0Window is the window of the keyword-p0 cap.
const p0Window = time.Hour

// takeP0Script counts one keyword-p0 message of a user in the current
// window unless the cap is reached: INCR, the window's expiry on the first
// count, and the cap check in one atomic round trip. A count over the cap
// is taken back at once, so the counter never exceeds the cap.
var takeP0Script = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1`)

// giveP0Script takes back one count of a message that was not accepted
// after all. A window that has expired meanwhile stays gone.
var giveP0Script = redis.NewScript(`
if redis.call('DECR', KEYS[1]) < 0 then redis.call('DEL', KEYS[1]) end
return 0`)

// takeP0 counts one message the shop's keywords made p0 against the user's
// cap of perHour per window (an hour from the user's first keyword p0). It
// reports whether the message may stay p0; if so, give must be called when
// the message is not accepted after all, so only accepted messages count.
// Like the other limits it falls back to a local count while Redis is
// unreachable.
func (l *rateLimiter) takeP0(ctx context.Context, shop, user string, perHour int) (give func(), ok bool) {
	if perHour <= 0 {
		return nil, false
	}
	key := "pd:p0:" + shop + ":" + user
	if l.useRedis() {
		rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		n, err := takeP0Script.Run(rctx, l.scripts, []string{key}, perHour, p0Window.Milliseconds()).Int()
		cancel()
		if err == nil {
			l.mode.Set(0)
			if n == 0 {
				return nil, false
			}
			return func() {
				ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 100*time.Millisecond)
				defer cancel()
				// Should Redis fail now, the user is one p0 short this
				// window: the cap errs on the side of the shop.
				_ = giveP0Script.Run(ctx, l.scripts, []string{key}).Err()
			}, true
		}
		l.degrade()
	}
	if !l.takeLocal(key, perHour, p0Window) {
		return nil, false
	}
	return func() { l.giveLocal(key) }, true
}

// useRedis reports whether limits go to Redis now: there is one, and it has
// not failed within retryWait.
func (l *rateLimiter) useRedis() bool {
	return l.redis != nil && time.Now().UnixNano() >= l.degraded.Load()
}

// localWindow counts events of one key in a fixed window, the local stand-in
// for a Redis counter.
type localWindow struct {
	n     int
	until time.Time
}

func (l *rateLimiter) takeLocal(key string, limit int, window time.Duration) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.windows[key]
	if w == nil || !now.Before(w.until) {
		if len(l.windows) > 100_000 {
			for k, w := range l.windows {
				if !now.Before(w.until) {
					delete(l.windows, k)
				}
			}
		}
		w = &localWindow{until: now.Add(window)}
		l.windows[key] = w
	}
	if w.n >= limit {
		return false
	}
	w.n++
	return true
}

func (l *rateLimiter) giveLocal(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := l.windows[key]; w != nil && w.n > 0 {
		w.n--
	}
}

// shopLease holds shop tokens this process took from Redis in one go.
type shopLease struct {
	mu     sync.Mutex
	tokens int
}

// takeShop spends one token of the shop's budget. The shop budget is large
// and hot, so each process takes tokens from Redis in chunks of about 20 ms
// worth and spends them locally: one Redis call per chunk instead of one
// per message. The user budget, small and per user, is checked every time.
func (l *rateLimiter) takeShop(ctx context.Context, shop string, lim Limits) (time.Duration, bool) {
	limit := redis_rate.Limit{Rate: lim.ShopPerSecond, Burst: lim.ShopBurst, Period: time.Second}
	l.mu.Lock()
	lease := l.leases[shop]
	if lease == nil {
		lease = &shopLease{}
		l.leases[shop] = lease
	}
	l.mu.Unlock()

	lease.mu.Lock()
	defer lease.mu.Unlock()
	if lease.tokens > 0 {
		lease.tokens--
		return 0, true
	}
	if !l.useRedis() {
		return l.checkLocal("s:"+shop, limit)
	}
	chunk := max(1, lim.ShopPerSecond/50)
	rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	res, err := l.redis.AllowAtMost(rctx, "s:"+shop, limit, chunk)
	cancel()
	if err != nil {
		l.degrade()
		return l.checkLocal("s:"+shop, limit)
	}
	l.mode.Set(0)
	if res.Allowed == 0 {
		return res.RetryAfter, false
	}
	lease.tokens = res.Allowed - 1
	return 0, true
}

// degrade skips Redis for a while after a failure, so requests do not each
// pay a Redis timeout, and says so in the metrics.
func (l *rateLimiter) degrade() {
	l.degraded.Store(time.Now().Add(l.retryWait).UnixNano())
	l.fallbacks.Inc()
	l.mode.Set(1)
}

func (l *rateLimiter) check(ctx context.Context, key string, limit redis_rate.Limit) (time.Duration, bool) {
	if l.useRedis() {
		ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		res, err := l.redis.Allow(ctx, key, limit)
		cancel()
		if err == nil {
			l.mode.Set(0)
			return res.RetryAfter, res.Allowed > 0
		}
		// Redis is unreachable or slow: keep accepting under local limits.
		l.degrade()
	}
	return l.checkLocal(key, limit)
}

func (l *rateLimiter) checkLocal(key string, limit redis_rate.Limit) (time.Duration, bool) {
	now := time.Now()
	l.mu.Lock()
	ll := l.local[key]
	if ll == nil {
		if len(l.local) > 100_000 {
			l.pruneLocked(now)
		}
		every := rate.Every(limit.Period / time.Duration(limit.Rate))
		ll = &localLimiter{lim: rate.NewLimiter(every, max(limit.Burst, 1))}
		l.local[key] = ll
	}
	ll.used = now
	l.mu.Unlock()
	r := ll.lim.ReserveN(now, 1)
	if !r.OK() {
		return limit.Period, false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// pruneLocked forgets local limiters unused for a minute.
func (l *rateLimiter) pruneLocked(now time.Time) {
	for k, ll := range l.local {
		if now.Sub(ll.used) > time.Minute {
			delete(l.local, k)
		}
	}
}
