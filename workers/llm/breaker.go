package llm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// ErrBreakerOpen is returned, without a call and without waiting, while the
// breaker of a credential is open (or half-open with its probes already
// out).
var ErrBreakerOpen = errors.New("llm: circuit breaker open")

// breakerSettings are the knobs every breaker of a Caller shares.
type breakerSettings struct {
	failures   uint32        // consecutive failures that open it
	ratio      float64       // failure ratio over the window that opens it ...
	minCalls   uint32        // ... once the window has this many calls
	window     time.Duration // rolling window of the ratio
	openFor    time.Duration // how long it stays open before half-open
	probes     uint32        // calls let through while half-open
	probeTTL   time.Duration // a probe slot is given back after this even if its caller vanished
	degradeFor time.Duration // how long to use the local breaker after Redis failed
}

// The credential label of peakdesk_llm_breaker_state. A label per key
// fingerprint would grow with the number of shops that bring a key (and
// with every key rotation), so the shops' own keys share one series
// holding the worst of their states; the logs name the fingerprint.
const (
	credentialDefault = "default"
	credentialShop    = "shop"
)

// breakers hands out one breaker per credential: base URL, model and API
// key. A shop whose own key is exhausted or revoked opens only its own
// breaker, never the one every other shop's calls go through. With Redis
// their state is shared by every process (gobreaker's
// DistributedCircuitBreaker on a Redis SharedDataStore); while Redis is
// unreachable each process falls back to a local breaker rather than
// failing or stalling the call.
type breakers struct {
	rdb      *redis.Client // nil: local breakers only
	store    *redisStore
	prefix   string
	settings breakerSettings
	log      *slog.Logger
	state    *prometheus.GaugeVec

	mu sync.Mutex
	m  map[string]*breaker
}

func newBreakers(rdb *redis.Client, prefix string, s breakerSettings, log *slog.Logger, state *prometheus.GaugeVec) *breakers {
	bs := &breakers{rdb: rdb, prefix: prefix, settings: s, log: log, state: state, m: map[string]*breaker{}}
	if rdb != nil {
		bs.store = &redisStore{rdb: rdb, prefix: prefix, held: map[string]string{}}
	}
	return bs
}

// KeyFingerprint names an API key in breaker names and logs without
// revealing it: the first 16 hex digits of its SHA-256 ("none" for no key).
func KeyFingerprint(apiKey string) string {
	if apiKey == "" {
		return "none"
	}
	sum := sha256.Sum256([]byte(apiKey))
	return hex.EncodeToString(sum[:8])
}

// get returns the breaker of model at provider (a base URL) called with
// apiKey; own tells whether the key is a shop's own (for the metric).
func (bs *breakers) get(provider, apiKey, model string, own bool) *breaker {
	fp := KeyFingerprint(apiKey)
	name := provider + "|" + model + "|" + fp
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if b, ok := bs.m[name]; ok {
		return b
	}
	b := &breaker{set: bs, name: name, key: "llm:" + name, model: model, provider: providerLabel(provider),
		fingerprint: fp, credential: credentialDefault}
	if own {
		b.credential = credentialShop
	}
	b.local = gobreaker.NewTwoStepCircuitBreaker[struct{}](b.gobreakerSettings())
	bs.m[name] = b
	bs.setGaugeLocked(b)
	return b
}

// setGaugeLocked sets the state gauge of b's series: b's own state for the
// default credential, else the worst state among the shops' keys of the
// same provider and model. bs.mu must be held.
func (bs *breakers) setGaugeLocked(b *breaker) {
	worst := gobreaker.State(b.seen.Load())
	if b.credential == credentialShop {
		for _, o := range bs.m {
			if o.credential == credentialShop && o.provider == b.provider && o.model == b.model {
				worst = max(worst, gobreaker.State(o.seen.Load()))
			}
		}
	}
	bs.state.WithLabelValues(b.provider, b.model, b.credential).Set(float64(worst))
}

// errFault and errExcluded are what a call's outcome becomes for gobreaker:
// a failure, or neither success nor failure.
var (
	errFault    = errors.New("provider fault")
	errExcluded = errors.New("not the provider's fault")
)

// breaker is the circuit breaker of one credential: base URL, model, key.
type breaker struct {
	set           *breakers
	name          string // base URL|model|key fingerprint
	key           string // gobreaker's name; the store prefixes the Redis keys made from it
	model         string
	provider      string       // host, for metrics and logs
	fingerprint   string       // of the key, for logs
	credential    string       // credentialDefault or credentialShop
	seen          atomic.Int32 // the gobreaker.State this process saw last
	local         *gobreaker.TwoStepCircuitBreaker[struct{}]
	openUntil     atomic.Int64 // unix nanos: known open until then, no need to ask Redis
	degradedUntil atomic.Int64 // unix nanos: Redis failed, use the local breaker until then
	// dcbMu serialises this process's updates of the shared state (gobreaker
	// reads the state before it takes the Redis lock, so concurrent updates
	// from one process would overwrite each other); it guards dcb.
	dcbMu sync.Mutex
	dcb   *gobreaker.DistributedCircuitBreaker[struct{}]
}

func (b *breaker) gobreakerSettings() gobreaker.Settings {
	s := b.set.settings
	return gobreaker.Settings{
		Name:         b.key,
		MaxRequests:  s.probes,
		Interval:     s.window,
		BucketPeriod: s.window / 6,
		Timeout:      s.openFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			calls := c.TotalSuccesses + c.TotalFailures
			return c.ConsecutiveFailures >= s.failures ||
				(calls >= s.minCalls && float64(c.TotalFailures) >= s.ratio*float64(calls))
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errExcluded) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			b.observe(to)
			b.set.log.Info("llm circuit breaker changed state", "provider", b.provider, "model", b.model,
				"key", b.fingerprint, "credential", b.credential, "from", from.String(), "to", to.String())
		},
	}
}

// observe records s as the state this process saw last. It is called on
// every call, so it touches the lock only when the state changed.
func (b *breaker) observe(s gobreaker.State) {
	if gobreaker.State(b.seen.Swap(int32(s))) == s {
		return
	}
	b.set.mu.Lock()
	defer b.set.mu.Unlock()
	b.set.setGaugeLocked(b)
}

// ticket is a call let through by allow; record needs it back.
type ticket struct {
	probe bool
	gen   uint64
	// probeKey is the Redis key of the half-open probe slot taken.
	probeKey string
	// localDone is set when the local breaker admitted the call.
	localDone func(error)
}

// allow decides whether a call may go out now. It never waits: an open
// breaker answers ErrBreakerOpen from memory once it has been seen open, and
// otherwise costs one Redis GET (plus an INCR for a half-open probe).
func (b *breaker) allow(ctx context.Context) (ticket, error) {
	now := time.Now() // gobreaker keeps wall-clock time; so must we
	if now.UnixNano() < b.openUntil.Load() {
		return ticket{}, ErrBreakerOpen
	}
	if b.set.store == nil || now.UnixNano() < b.degradedUntil.Load() {
		return b.allowLocal()
	}
	st, found, err := b.set.store.sharedState(ctx, b.key)
	if err != nil {
		b.degrade(err)
		return b.allowLocal()
	}
	if !found {
		return ticket{}, nil // no state yet: closed; record creates it
	}
	switch {
	case st.State == gobreaker.StateClosed:
		b.observe(gobreaker.StateClosed)
		return ticket{gen: st.Generation}, nil
	case st.State == gobreaker.StateOpen && now.Before(st.Expiry):
		b.observe(gobreaker.StateOpen)
		b.openUntil.Store(st.Expiry.UnixNano())
		return ticket{}, ErrBreakerOpen
	}
	// Half-open, or open with its time up (it becomes half-open on the next
	// update): let only `probes` calls through, across all processes.
	b.observe(gobreaker.StateHalfOpen)
	gen := st.Generation
	if st.State == gobreaker.StateOpen {
		gen++
	}
	key := fmt.Sprintf("%sgobreaker:probe:%s:%d", b.set.prefix, b.key, gen)
	n, err := b.set.store.takeSlot(ctx, key, b.set.settings.probeTTL)
	if err != nil {
		b.degrade(err)
		return b.allowLocal()
	}
	if n > int64(b.set.settings.probes) {
		return ticket{}, ErrBreakerOpen
	}
	return ticket{probe: true, gen: gen, probeKey: key}, nil
}

func (b *breaker) allowLocal() (ticket, error) {
	done, err := b.local.Allow()
	if err != nil {
		return ticket{}, ErrBreakerOpen
	}
	return ticket{localDone: done}, nil
}

// record reports the outcome of a call let through by allow: nil for a
// success, errFault for a provider failure, errExcluded for anything else.
// It returns whether the breaker is open now, so that the caller does not
// wait for a retry that would be refused.
func (b *breaker) record(ctx context.Context, t ticket, outcome error) (open bool) {
	if t.localDone != nil {
		t.localDone(outcome)
		st := b.local.State()
		b.observe(st)
		return st == gobreaker.StateOpen
	}
	if b.set.store == nil {
		return false
	}
	if !t.probe && errors.Is(outcome, errExcluded) {
		return false // counts for nothing outside a probe: spare Redis the write
	}
	b.dcbMu.Lock()
	defer b.dcbMu.Unlock()
	st, found, err := b.set.store.sharedState(ctx, b.key)
	if err != nil {
		b.degrade(err)
		return false
	}
	// Like gobreaker's own generation check: the result of a call let in
	// under another state (closed before it opened, say) must not decide a
	// half-open probe. A probe's result counts only in its half-open round.
	stale := found && t.gen != 0 && st.Generation != t.gen &&
		!(t.probe && st.State == gobreaker.StateOpen && st.Generation+1 == t.gen)
	if stale {
		b.releaseProbe(ctx, t, outcome)
		return st.State == gobreaker.StateOpen && time.Now().Before(st.Expiry)
	}
	if b.dcb == nil || !found {
		// First use in this process, or the shared state expired or was
		// flushed: (re)create it.
		dcb, err := gobreaker.NewDistributedCircuitBreaker[struct{}](b.set.store, b.gobreakerSettings())
		if err != nil {
			b.degrade(err)
			return false
		}
		b.dcb = dcb
	}
	_, err = b.dcb.Execute(func() (struct{}, error) { return struct{}{}, outcome })
	if err != nil && !errors.Is(err, outcome) && !errors.Is(err, gobreaker.ErrOpenState) &&
		!errors.Is(err, gobreaker.ErrTooManyRequests) {
		b.degrade(err)
	}
	b.releaseProbe(ctx, t, outcome)
	// The embedded breaker holds the state just written.
	if b.dcb.CircuitBreaker.State() != gobreaker.StateOpen {
		return false
	}
	b.observe(gobreaker.StateOpen)
	until := time.Now().Add(b.set.settings.openFor)
	if st, found, err := b.set.store.sharedState(ctx, b.key); err == nil && found && st.State == gobreaker.StateOpen {
		until = st.Expiry
	}
	b.openUntil.Store(until.UnixNano())
	return true
}

// releaseProbe gives a probe slot back when its call told nothing about the
// provider, so another call can probe at once.
func (b *breaker) releaseProbe(ctx context.Context, t ticket, outcome error) {
	if t.probe && errors.Is(outcome, errExcluded) {
		_ = b.set.rdb.Decr(ctx, t.probeKey).Err()
	}
}

func (b *breaker) degrade(err error) {
	until := time.Now().Add(b.set.settings.degradeFor)
	if prev := b.degradedUntil.Swap(until.UnixNano()); prev < time.Now().UnixNano() {
		b.set.log.Warn("llm circuit breaker state in Redis unavailable; using a local breaker",
			"provider", b.provider, "model", b.model, "key", b.fingerprint, "for", b.set.settings.degradeFor, "err", err)
	}
}

// redisStore is gobreaker's SharedDataStore on Redis. Its lock is a real
// Redis lock: SET NX with an expiry and a random token, released only by its
// holder (compare-and-delete).
type redisStore struct {
	rdb    *redis.Client
	prefix string

	mu   sync.Mutex
	held map[string]string // lock name -> token this process holds
}

const (
	storeOpTimeout = time.Second
	lockTTL        = 2 * time.Second        // a crashed holder's lock frees itself
	lockSpin       = 250 * time.Millisecond // how long Lock tries before gobreaker's 500 ms pause
	stateTTL       = 24 * time.Hour         // an idle breaker's state is forgotten
)

// stateKey mirrors the key gobreaker v2 stores a breaker's shared state
// under, so that allow can read it without taking the lock.
func stateKey(name string) string { return "gobreaker:state:" + name }

var unlockScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`)

var errLockBusy = errors.New("llm: breaker lock busy")

// Lock takes the lock name, trying for a little while.
func (s *redisStore) Lock(name string) error {
	var tok [12]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	deadline := time.Now().Add(lockSpin)
	for wait := 500 * time.Microsecond; ; wait = min(2*wait, 8*time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
		ok, err := s.rdb.SetNX(ctx, s.prefix+name, token, lockTTL).Result()
		cancel()
		if err != nil {
			// Redis is failing: the state write that follows fails too and
			// the caller falls back to its local breaker. Returning an error
			// here instead would have gobreaker retry for 5 s.
			s.mu.Lock()
			s.held[name] = ""
			s.mu.Unlock()
			return nil
		}
		if ok {
			s.mu.Lock()
			s.held[name] = token
			s.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			return errLockBusy
		}
		time.Sleep(wait)
	}
}

// Unlock releases the lock name if this process still holds it.
func (s *redisStore) Unlock(name string) error {
	s.mu.Lock()
	token := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if token == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	return unlockScript.Run(ctx, s.rdb, []string{s.prefix + name}, token).Err()
}

// GetData returns the data stored under name, nil when there is none.
func (s *redisStore) GetData(name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	b, err := s.rdb.Get(ctx, s.prefix+name).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// SetData stores data under name.
func (s *redisStore) SetData(name string, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	return s.rdb.Set(ctx, s.prefix+name, data, stateTTL).Err()
}

// sharedState reads the shared state of the breaker called name.
func (s *redisStore) sharedState(ctx context.Context, name string) (gobreaker.SharedState, bool, error) {
	var st gobreaker.SharedState
	ctx, cancel := context.WithTimeout(ctx, storeOpTimeout)
	defer cancel()
	b, err := s.rdb.Get(ctx, s.prefix+stateKey(name)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return st, false, nil
	case err != nil:
		return st, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("decode breaker state: %w", err)
	}
	return st, true, nil
}

var takeSlotScript = redis.NewScript(`local n = redis.call("incr", KEYS[1]) if n == 1 then redis.call("pexpire", KEYS[1], ARGV[1]) end return n`)

// takeSlot increments the counter key and returns it; the counter expires
// ttl after it was first taken, so slots of vanished callers come back.
func (s *redisStore) takeSlot(ctx context.Context, key string, ttl time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, storeOpTimeout)
	defer cancel()
	return takeSlotScript.Run(ctx, s.rdb, []string{key}, ttl.Milliseconds()).Int64()
}
