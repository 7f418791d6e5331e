package llm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
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
	syncEvery  time.Duration // how long a process may keep closed-state successes to itself
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
	rdb      *redis.Client     // nil: local breakers only
	locks    *redislock.Client // the shared state's lock and the half-open probe leases
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
		bs.locks = redislock.New(rdb)
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
		fingerprint: fp, credential: credentialDefault, lastSync: time.Now()}
	if own {
		b.credential = credentialShop
	}
	b.local = gobreaker.NewTwoStepCircuitBreaker[struct{}](b.gobreakerSettings())
	if bs.rdb != nil {
		b.store = &redisStore{rdb: bs.rdb, locks: bs.locks, prefix: bs.prefix, held: map[string]*redislock.Lock{}}
	}
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
	store         *redisStore  // this breaker's shared state in Redis; nil: local only
	openUntil     atomic.Int64 // unix nanos: known open until then, no need to ask Redis
	degradedUntil atomic.Int64 // unix nanos: Redis failed, use the local breaker until then
	// dcbMu serialises this process's updates of the shared state (gobreaker
	// reads the state before it takes the Redis lock, so concurrent updates
	// from one process would overwrite each other); it guards dcb and its
	// creation.
	dcbMu sync.Mutex
	dcb   *gobreaker.DistributedCircuitBreaker[struct{}]

	// The successes of closed-state calls are kept in the process and
	// written to the shared state in one update (see record): every
	// syncEvery, with this process's next failure, or at once while the
	// shared state holds a failure streak they must break.
	pendingMu  sync.Mutex
	pendingGen uint64      // the closed generation the pending successes were let in under
	pendingOK  uint32      // successes not yet in the shared state
	pendingBrk bool        // one of them came while a failure streak was to be seen
	lastSync   time.Time   // of the pending successes
	streak     atomic.Bool // the shared state was last seen with consecutive failures
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
	// probeLease is the half-open probe slot taken (a lease that lapses by
	// itself should its caller vanish).
	probeLease *redislock.Lock
	// localDone is set when the local breaker admitted the call.
	localDone func(error)
}

// allow decides whether a call may go out now. It never waits: an open
// breaker answers ErrBreakerOpen from memory once it has been seen open, and
// otherwise costs one Redis GET (plus taking a probe lease when half-open).
// The first call of a breaker in a process also creates its gobreaker
// (which takes the shared state's lock once).
func (b *breaker) allow(ctx context.Context) (ticket, error) {
	now := time.Now() // gobreaker keeps wall-clock time; so must we
	if now.UnixNano() < b.openUntil.Load() {
		return ticket{}, ErrBreakerOpen
	}
	if b.store == nil || now.UnixNano() < b.degradedUntil.Load() {
		return b.allowLocal()
	}
	st, found, err := b.sharedState(ctx)
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
		b.streak.Store(st.Counts.ConsecutiveFailures > 0)
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
	lease, err := b.takeProbe(ctx, gen)
	switch {
	case errors.Is(err, redislock.ErrNotObtained):
		return ticket{}, ErrBreakerOpen
	case err != nil:
		b.degrade(err)
		return b.allowLocal()
	}
	return ticket{probe: true, gen: gen, probeLease: lease}, nil
}

// takeProbe takes one of the half-open round's probe slots, shared by all
// processes: a lease per slot, held until the probe's result is in (or
// probeTTL, should its caller vanish). It returns redislock.ErrNotObtained
// when every slot is taken.
func (b *breaker) takeProbe(ctx context.Context, gen uint64) (*redislock.Lock, error) {
	ctx, cancel := context.WithTimeout(ctx, storeOpTimeout)
	defer cancel()
	for i := range b.set.settings.probes {
		key := fmt.Sprintf("%sllm:probe:%s:%d:%d", b.set.prefix, b.key, gen, i)
		lease, err := b.set.locks.Obtain(ctx, key, b.set.settings.probeTTL, nil)
		if !errors.Is(err, redislock.ErrNotObtained) {
			return lease, err
		}
	}
	return nil, redislock.ErrNotObtained
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
	if b.store == nil {
		return false
	}
	if !t.probe && errors.Is(outcome, errExcluded) {
		return false // counts for nothing outside a probe: spare Redis the write
	}
	if outcome == nil && !t.probe && t.gen != 0 {
		// A success in the closed state: kept in the process until it is
		// time to share it (no Redis round trip in the common case).
		switch b.addSuccess(t.gen) {
		case syncNotDue:
			return false
		case syncBreaksStreak:
			b.dcbMu.Lock() // it must reach the shared state before another failure does
		default:
			if !b.dcbMu.TryLock() {
				return false // another call of this process is writing the state; later
			}
		}
		defer b.dcbMu.Unlock()
		b.flushLocked(ctx)
		return false
	}
	b.dcbMu.Lock()
	defer b.dcbMu.Unlock()
	st, found, err := b.sharedStateLocked(ctx)
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
	if !found {
		// The shared state expired or was flushed: recreate it.
		b.dcb = nil
		if err := b.ensureDCBLocked(); err != nil {
			b.degrade(err)
			return false
		}
	}
	// This process's successes not yet shared go in the same update, before
	// this outcome (they came first), if they were let in under the
	// generation the update applies to. Not when the shared state holds
	// failures in a row that none of them came after, though: they were
	// let in while there was no streak to be seen, so they came before it,
	// and gobreaker can add a success only after it, where it would break
	// the streak and delay the opening. They are dropped instead, which can
	// only make the failure ratio a little worse (by at most BreakerSync's
	// worth of this process's successes).
	pending := b.takePending()
	if !found || st.State != gobreaker.StateClosed || pending.gen != st.Generation ||
		(st.Counts.ConsecutiveFailures > 0 && !pending.breaks) {
		pending.n = 0
	}
	_, err = b.dcb.Execute(func() (struct{}, error) {
		b.applySuccessesLocked(pending.n)
		return struct{}{}, outcome
	})
	if err != nil && !errors.Is(err, outcome) && !errors.Is(err, gobreaker.ErrOpenState) &&
		!errors.Is(err, gobreaker.ErrTooManyRequests) {
		b.degrade(err)
	}
	b.streak.Store(b.dcb.CircuitBreaker.Counts().ConsecutiveFailures > 0)
	b.releaseProbe(ctx, t, outcome)
	// The embedded breaker holds the state just written.
	if b.dcb.CircuitBreaker.State() != gobreaker.StateOpen {
		return false
	}
	b.observe(gobreaker.StateOpen)
	until := time.Now().Add(b.set.settings.openFor)
	if st, found, err := b.sharedStateLocked(ctx); err == nil && found && st.State == gobreaker.StateOpen {
		until = st.Expiry
	}
	b.openUntil.Store(until.UnixNano())
	return true
}

// pendingSuccesses are closed-state successes of one generation not yet in
// the shared state.
type pendingSuccesses struct {
	gen    uint64
	n      uint32
	breaks bool // one came while the shared state was seen with a failure streak
}

// When the pending successes are due to be shared.
const (
	syncNotDue       = iota
	syncDue          // syncEvery has passed since they were last shared
	syncBreaksStreak // the shared state holds a failure streak, which they must break
)

// addSuccess notes a success let in under the closed generation gen and
// tells whether the pending successes are due to be shared.
func (b *breaker) addSuccess(gen uint64) int {
	b.pendingMu.Lock()
	defer b.pendingMu.Unlock()
	switch {
	case gen < b.pendingGen:
		return syncNotDue // let in before the state changed: it counts for nothing, as in gobreaker
	case gen > b.pendingGen:
		b.pendingGen, b.pendingOK, b.pendingBrk = gen, 0, false // the earlier ones' generation is over
	}
	b.pendingOK++
	switch {
	case b.streak.Load():
		b.pendingBrk = true
		return syncBreaksStreak
	case time.Since(b.lastSync) >= b.set.settings.syncEvery:
		return syncDue
	}
	return syncNotDue
}

// takePending returns the pending successes and starts counting anew.
func (b *breaker) takePending() pendingSuccesses {
	b.pendingMu.Lock()
	defer b.pendingMu.Unlock()
	p := pendingSuccesses{gen: b.pendingGen, n: b.pendingOK, breaks: b.pendingBrk}
	b.pendingOK, b.pendingBrk = 0, false
	b.lastSync = time.Now()
	return p
}

// flushLocked writes the pending successes to the shared state in one
// update: a lock, a read and a write however many they are. Those let in
// under a generation that is over count for nothing. dcbMu must be held.
func (b *breaker) flushLocked(ctx context.Context) {
	p := b.takePending()
	if p.n == 0 {
		return
	}
	st, found, err := b.sharedStateLocked(ctx)
	switch {
	case err != nil:
		b.degrade(err)
		return
	case !found || st.State != gobreaker.StateClosed || st.Generation != p.gen:
		return
	}
	_, err = b.dcb.Execute(func() (struct{}, error) {
		b.applySuccessesLocked(p.n - 1)
		return struct{}{}, nil // the last one
	})
	if err != nil && !errors.Is(err, gobreaker.ErrOpenState) && !errors.Is(err, gobreaker.ErrTooManyRequests) {
		b.degrade(err)
	}
	b.streak.Store(b.dcb.CircuitBreaker.Counts().ConsecutiveFailures > 0)
}

// applySuccessesLocked counts n successes in the breaker's state as
// DistributedCircuitBreaker.Execute has just read it from Redis: called from
// within Execute's request, under the shared state's lock, so that they go
// to Redis with the update Execute makes, by gobreaker's own rules (a
// success in an open state is refused and counts for nothing). dcbMu must be
// held.
func (b *breaker) applySuccessesLocked(n uint32) {
	for range n {
		if _, err := b.dcb.CircuitBreaker.Execute(func() (struct{}, error) { return struct{}{}, nil }); err != nil {
			return
		}
	}
}

// releaseProbe gives a probe slot back when its call told nothing about the
// provider, so another call can probe at once.
func (b *breaker) releaseProbe(ctx context.Context, t ticket, outcome error) {
	if t.probe && t.probeLease != nil && errors.Is(outcome, errExcluded) {
		ctx, cancel := context.WithTimeout(ctx, storeOpTimeout)
		defer cancel()
		_ = t.probeLease.Release(ctx)
	}
}

// sharedState reads the breaker's shared state without taking its lock: as
// gobreaker last stored it through the store (see redisStore). found is
// false when there is none (yet, or any more).
func (b *breaker) sharedState(ctx context.Context) (gobreaker.SharedState, bool, error) {
	if !b.store.seen() {
		b.dcbMu.Lock()
		err := b.ensureDCBLocked()
		b.dcbMu.Unlock()
		if err != nil {
			return gobreaker.SharedState{}, false, err
		}
	}
	return b.store.state(ctx)
}

// sharedStateLocked is sharedState with dcbMu held.
func (b *breaker) sharedStateLocked(ctx context.Context) (gobreaker.SharedState, bool, error) {
	if err := b.ensureDCBLocked(); err != nil {
		return gobreaker.SharedState{}, false, err
	}
	return b.store.state(ctx)
}

// ensureDCBLocked creates this process's DistributedCircuitBreaker on the
// store if there is none; creating it stores the initial shared state when
// there is none, and shows the store where gobreaker keeps it. dcbMu must be
// held.
func (b *breaker) ensureDCBLocked() error {
	if b.dcb != nil {
		return nil
	}
	dcb, err := gobreaker.NewDistributedCircuitBreaker[struct{}](b.store, b.gobreakerSettings())
	if err != nil {
		return err
	}
	b.dcb = dcb
	return nil
}

func (b *breaker) degrade(err error) {
	until := time.Now().Add(b.set.settings.degradeFor)
	if prev := b.degradedUntil.Swap(until.UnixNano()); prev < time.Now().UnixNano() {
		b.set.log.Warn("llm circuit breaker state in Redis unavailable; using a local breaker",
			"provider", b.provider, "model", b.model, "key", b.fingerprint, "for", b.set.settings.degradeFor, "err", err)
	}
}

// redisStore is one breaker's gobreaker SharedDataStore on Redis. Its lock
// is a redislock lock (with an expiry, released only by its holder).
//
// The breaker reads its shared state without the lock (allow must not wait
// for it) through the store, not by naming gobreaker's keys: the store
// notes the name gobreaker reads and writes the breaker's state under
// (the one piece of data a DistributedCircuitBreaker stores; a store serves
// one breaker), and state returns what is stored under it, decoded as the
// gobreaker.SharedState it is.
type redisStore struct {
	rdb    *redis.Client
	locks  *redislock.Client
	prefix string

	mu        sync.Mutex
	held      map[string]*redislock.Lock // lock name -> the lock this process holds
	lockLost  bool                       // Redis failed when Lock was called: SetData must not write
	stateName string                     // the data name gobreaker uses, once seen
	reading   *stateRead                 // the read of the state in flight, joined by concurrent readers
	lastRaw   []byte                     // the state as last read ...
	lastState gobreaker.SharedState      // ... and decoded
}

// stateRead is one read of the shared state that concurrent calls share.
type stateRead struct {
	done  chan struct{}
	st    gobreaker.SharedState
	found bool
	err   error
}

const (
	storeOpTimeout = time.Second
	lockTTL        = 2 * time.Second      // a crashed holder's lock frees itself
	lockRetry      = 5 * time.Millisecond // how often Lock tries again ...
	lockTries      = 50                   // ... for about 250 ms before gobreaker's 500 ms pause
	stateTTL       = 24 * time.Hour       // an idle breaker's state is forgotten
)

var errLockBusy = errors.New("llm: breaker lock busy")

// Lock takes the lock name, trying for a little while.
func (s *redisStore) Lock(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	lock, err := s.locks.Obtain(ctx, s.prefix+name, lockTTL, &redislock.Options{
		RetryStrategy: redislock.LimitRetry(redislock.LinearBackoff(lockRetry), lockTries)})
	switch {
	case errors.Is(err, redislock.ErrNotObtained):
		return errLockBusy
	case err != nil:
		// Redis is failing. Returning an error would have gobreaker retry
		// for 5 s; instead the lock counts as taken but SetData writes
		// nothing under it, and the caller's next read of the state fails
		// and falls back to its local breaker. (Failing SetData instead
		// would crash gobreaker v2.4.0's NewDistributedCircuitBreaker,
		// whose deferred unlock runs on the nil it returns on error.)
		s.mu.Lock()
		s.lockLost = true
		s.mu.Unlock()
		return nil
	}
	s.mu.Lock()
	s.held[name] = lock
	s.mu.Unlock()
	return nil
}

// Unlock releases the lock name if this process still holds it.
func (s *redisStore) Unlock(name string) error {
	s.mu.Lock()
	lock := s.held[name]
	delete(s.held, name)
	s.lockLost = false
	s.mu.Unlock()
	if lock == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	if err := lock.Release(ctx); err != nil && !errors.Is(err, redislock.ErrLockNotHeld) {
		return err
	}
	return nil // a lapsed lock has nothing to release
}

// GetData returns the data stored under name, nil when there is none.
func (s *redisStore) GetData(name string) ([]byte, error) {
	s.noteState(name)
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	return s.get(ctx, name)
}

// SetData stores data under name, unless Lock could not reach Redis: a
// write without the lock could undo another process's update.
func (s *redisStore) SetData(name string, data []byte) error {
	s.noteState(name)
	s.mu.Lock()
	lost := s.lockLost
	s.mu.Unlock()
	if lost {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeOpTimeout)
	defer cancel()
	return s.rdb.Set(ctx, s.prefix+name, data, stateTTL).Err()
}

// seen reports whether gobreaker has used the store yet.
func (s *redisStore) seen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stateName != ""
}

func (s *redisStore) noteState(name string) {
	s.mu.Lock()
	s.stateName = name
	s.mu.Unlock()
}

func (s *redisStore) get(ctx context.Context, name string) ([]byte, error) {
	b, err := s.rdb.Get(ctx, s.prefix+name).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// state reads the shared state gobreaker stored last, without its lock;
// found is false when there is none, or gobreaker has not used the store
// yet. Calls while a read is in flight share its answer (a GET's worth
// older at most), and a state that did not change is not decoded again.
func (s *redisStore) state(ctx context.Context) (gobreaker.SharedState, bool, error) {
	s.mu.Lock()
	name := s.stateName
	if name == "" {
		s.mu.Unlock()
		return gobreaker.SharedState{}, false, nil
	}
	if r := s.reading; r != nil {
		s.mu.Unlock()
		select {
		case <-r.done:
			return r.st, r.found, r.err
		case <-ctx.Done():
			return gobreaker.SharedState{}, false, ctx.Err()
		}
	}
	r := &stateRead{done: make(chan struct{})}
	s.reading = r
	s.mu.Unlock()

	// The read serves other calls too: only its own timeout ends it.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeOpTimeout)
	b, err := s.get(rctx, name)
	cancel()
	s.mu.Lock()
	switch {
	case err != nil:
		r.err = err
	case b == nil:
	case bytes.Equal(b, s.lastRaw):
		r.st, r.found = s.lastState, true
	default:
		var st gobreaker.SharedState
		if err := json.Unmarshal(b, &st); err != nil {
			r.err = fmt.Errorf("decode breaker state: %w", err)
			break
		}
		s.lastRaw, s.lastState = b, st
		r.st, r.found = st, true
	}
	s.reading = nil
	s.mu.Unlock()
	close(r.done)
	return r.st, r.found, r.err
}
