// Package outbox carries out the side effects peakdesk promises in its
// replies — coupons, refunds, order follow-ups — and delivers reply webhooks,
// exactly once at the shop even when the shop's systems fail for an hour.
//
// Actions are written in the same transaction as the reply that promises
// them (storage.InsertActions). Relays claim due actions with
// FOR UPDATE SKIP LOCKED and a lease, call the shop API with the action's
// idempotency key, retry transient failures on a linear schedule and send
// final refusals and exhausted actions to dead, where operators (Ops) can
// retry or cancel them. Every call to a shop passes egress (https, public
// addresses, no redirects; a refused call is dead at once) and every reply
// webhook is signed per attempt (VerifyWebhook). Tools are the checked entry
// points the LLM uses to promise anything at all.
package outbox

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox/egress"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// FollowUpResult is what an order follow-up found out once the shop
// answered.
type FollowUpResult struct {
	// OrderID is the order the customer asked about ("" when they named
	// none).
	OrderID string
	// Order and Logistics are the facts of the order answered about, when
	// the answer is about one of the customer's orders.
	Order     *shopapi.Order
	Logistics *shopapi.Logistics
	// Text is the reply with the facts, in the customer's language,
	// personal data masked.
	Text string
}

// Config configures a Relay. DB, Shop, OnFollowUp and OnHandoff are
// required.
type Config struct {
	DB   *storage.DB
	Shop *shopapi.Client
	// OnFollowUp pushes the second reply of an order follow-up (store it
	// and publish its event, plus its webhook). It may be called more than
	// once for one action if a relay dies between the call and recording
	// the result, so it must be idempotent: derive the reply id from the
	// action's IdempotencyKey. An error makes the attempt fail and retry.
	OnFollowUp func(ctx context.Context, a peakdesk.Action, r FollowUpResult) error
	// OnHandoff is called when an order follow-up is given up (out of
	// attempts): mark the conversation for a human and tell the customer
	// text (in their language). Like OnFollowUp it must be idempotent. Its
	// error is recorded in the dead action's last error.
	OnHandoff func(ctx context.Context, a peakdesk.Action, text, reason string) error
	// Lookups reads orders for follow-ups, coalesced with other customers'
	// lookups and cached; nil makes uncached ones.
	Lookups *Lookups
	// Texts renders follow-ups in each shop's wording; nil: the built-in
	// texts.
	Texts *texts.Library

	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the relay's metrics; defaults to a private
	// registry.
	Registerer prometheus.Registerer
	// ID names this relay as lease owner and in attempt rows. Default
	// host-pid-random.
	ID string
	// Concurrency is how many actions this relay carries out at once.
	// Default 32.
	Concurrency int
	// Lease is how long a claim is this relay's; an action whose relay
	// vanished is re-claimed after it. It must exceed twice AttemptTimeout.
	// Default 90 s.
	Lease time.Duration
	// AttemptTimeout bounds one attempt (shop calls and the follow-up
	// hook), and the handoff hook apart. Default 30 s.
	AttemptTimeout time.Duration
	// PollInterval is how often the relay looks for due actions besides
	// being woken by LISTEN/NOTIFY. Default 1 s.
	PollInterval time.Duration
	// Step is the linear backoff step (peakdesk.LinearBackOff): the retry
	// after a run's n-th failed attempt waits Step·n, spread by ±Jitter.
	// Default 15 s.
	Step time.Duration
	// FollowUpStep is the step of order follow-ups, whose customer waits.
	// Default 5 s.
	FollowUpStep time.Duration
	// Jitter spreads every wait by up to ± this fraction of it (0..1], so
	// actions that failed together do not retry together. Default (and
	// when 0) 0.2.
	Jitter float64
	// MaxDelay caps one wait, including a shop's Retry-After. Default 10 min.
	MaxDelay time.Duration
	// SoftStop is how long Stop lets attempts in flight finish before it
	// cuts them short. Default 10 s.
	SoftStop time.Duration
	// MetricsInterval is how often the action gauges are refreshed from
	// Postgres. Default 15 s.
	MetricsInterval time.Duration
	// SucceededCountEvery is how often the gauge of succeeded actions is
	// counted again: they grow with history, and counting them reads most
	// of the table (see storage.DB.ActionCounts). Default 5 min.
	SucceededCountEvery time.Duration
	// Now is the clock of schedules and leases. Default time.Now.
	Now func() time.Time
	// Rand returns a number in [0, 1) for jitter. Default math/rand/v2.
	Rand func() float64
}

func (c *Config) setDefaults() {
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.ID = cmp.Or(host, "relay") + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
	}
	c.Concurrency = cmp.Or(c.Concurrency, 32)
	c.Lease = cmp.Or(c.Lease, 90*time.Second)
	c.AttemptTimeout = cmp.Or(c.AttemptTimeout, 30*time.Second)
	c.PollInterval = cmp.Or(c.PollInterval, time.Second)
	c.Step = cmp.Or(c.Step, 15*time.Second)
	c.FollowUpStep = cmp.Or(c.FollowUpStep, 5*time.Second)
	c.Jitter = cmp.Or(c.Jitter, 0.2)
	c.MaxDelay = cmp.Or(c.MaxDelay, 10*time.Minute)
	c.SoftStop = cmp.Or(c.SoftStop, 10*time.Second)
	c.MetricsInterval = cmp.Or(c.MetricsInterval, 15*time.Second)
	c.SucceededCountEvery = cmp.Or(c.SucceededCountEvery, storage.SucceededCountEvery)
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("outbox: relay config: DB is required")
	case c.Shop == nil:
		return errors.New("outbox: relay config: Shop is required")
	case c.OnFollowUp == nil:
		return errors.New("outbox: relay config: OnFollowUp is required (order follow-ups push a second reply)")
	case c.OnHandoff == nil:
		return errors.New("outbox: relay config: OnHandoff is required (a failed follow-up hands over to a human)")
	case c.Concurrency < 1:
		return errors.New("outbox: relay config: Concurrency must be at least 1")
	case c.Lease <= 2*c.AttemptTimeout:
		return errors.New("outbox: relay config: Lease must exceed twice AttemptTimeout")
	case c.Jitter < 0 || c.Jitter > 1:
		return errors.New("outbox: relay config: Jitter must be within 0..1")
	case c.Step < 0 || c.FollowUpStep < 0 || c.MaxDelay < 0:
		return errors.New("outbox: relay config: Step, FollowUpStep and MaxDelay must not be negative")
	case c.SucceededCountEvery < 0:
		return errors.New("outbox: relay config: SucceededCountEvery must not be negative")
	case len(c.ID) > 200:
		return errors.New("outbox: relay config: ID must be at most 200 bytes")
	}
	return nil
}

// maxClaim bounds one claim query.
const maxClaim = 100

// Relay carries out outbox actions. Many relays may run against one
// database; each action is claimed by one at a time.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	metrics *relayMetrics
	// retry and followUpRetry schedule the next attempt after a failed one
	// (Wait only reads them, so attempts share them).
	retry, followUpRetry peakdesk.LinearBackOff
	desk                 *orderDesk
	orders               *orderMetrics
	// hurried is when each shop's waiting follow-ups were last brought
	// forward (a follow-up of the shop succeeded: the shop is back).
	hurriedMu sync.Mutex
	hurried   map[string]time.Time

	slots chan struct{} // one token per action in flight
	wake  chan struct{} // LISTEN/NOTIFY or a freed slot: look for work now
	freed chan struct{}

	startOnce, stopOnce sync.Once
	started             bool
	loopCancel          context.CancelFunc // stops claiming, listening, metrics
	workCancel          context.CancelFunc // cuts attempts in flight short
	workCtx             context.Context
	loopDone            chan struct{}
	inflight            sync.WaitGroup
	bg                  sync.WaitGroup
	// killed makes attempts end without recording anything, as if the
	// process died (tests).
	killed atomic.Bool
}

// NewRelay returns a Relay for cfg.
func NewRelay(cfg Config) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newRelayMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("outbox: metrics: %w", err)
	}
	om, err := newOrderMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	if cfg.Lookups == nil {
		if cfg.Lookups, err = NewLookups(LookupsConfig{Shop: cfg.Shop, Registerer: cfg.Registerer}); err != nil {
			return nil, err
		}
	}
	return &Relay{
		desk:    &orderDesk{lookups: cfg.Lookups, texts: cfg.Texts},
		orders:  om,
		hurried: map[string]time.Time{},
		cfg:     cfg,
		log:     cfg.Logger.With("component", "relay", "relay", cfg.ID),
		metrics: m,
		retry:   peakdesk.LinearBackOff{Step: cfg.Step, Max: cfg.MaxDelay, Jitter: cfg.Jitter, Rand: cfg.Rand},
		followUpRetry: peakdesk.LinearBackOff{Step: cfg.FollowUpStep, Max: cfg.MaxDelay, Jitter: cfg.Jitter,
			Rand: cfg.Rand},
		slots:    make(chan struct{}, cfg.Concurrency),
		wake:     make(chan struct{}, 1),
		freed:    make(chan struct{}, 1),
		loopDone: make(chan struct{}),
	}, nil
}

// ID is the relay's lease owner id.
func (r *Relay) ID() string { return r.cfg.ID }

// Start listens for new actions and starts claiming. It returns once the
// listening connection is up, or fails fast when Postgres is unreachable.
func (r *Relay) Start(ctx context.Context) error {
	var err error
	r.startOnce.Do(func() {
		var l *storage.ActionListener
		if l, err = r.cfg.DB.ListenActions(ctx); err != nil {
			err = fmt.Errorf("outbox: relay start: %w", err)
			return
		}
		loopCtx, loopCancel := context.WithCancel(context.Background())
		r.workCtx, r.workCancel = context.WithCancel(context.Background())
		r.loopCancel, r.started = loopCancel, true
		r.bg.Add(2)
		go r.listen(loopCtx, l)
		go r.refreshMetrics(loopCtx)
		go r.loop(loopCtx)
		r.log.Info("outbox relay started", "concurrency", r.cfg.Concurrency, "lease", r.cfg.Lease.String())
	})
	return err
}

// Stop stops claiming, lets attempts in flight finish for up to SoftStop,
// then cuts the rest short (they are recorded as aborted and retried at
// once by any relay). It waits for everything it started and is idempotent.
func (r *Relay) Stop() {
	r.stopOnce.Do(func() {
		if !r.started {
			return
		}
		r.loopCancel()
		<-r.loopDone
		done := make(chan struct{})
		go func() {
			r.inflight.Wait()
			close(done)
		}()
		t := time.NewTimer(r.cfg.SoftStop)
		select {
		case <-done:
		case <-t.C:
			r.log.Warn("outbox relay soft stop timed out; cutting attempts short")
			r.workCancel()
			<-done
		}
		t.Stop()
		r.workCancel()
		r.bg.Wait()
		r.log.Info("outbox relay stopped")
	})
}

// kill stops the relay as a crash would: attempts in flight are cut short
// and nothing more is recorded, so their leases must expire.
func (r *Relay) kill() {
	r.killed.Store(true)
	if r.started {
		r.workCancel()
	}
	r.Stop()
}

func (r *Relay) nudge() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// listen turns notifications into wake-ups, reconnecting when the
// connection fails; polling covers the gaps.
func (r *Relay) listen(ctx context.Context, l *storage.ActionListener) {
	defer r.bg.Done()
	reconnect := peakdesk.LinearBackOff{Step: 500 * time.Millisecond, Max: 30 * time.Second, Jitter: 0.2}
	for {
		if l == nil {
			var err error
			if l, err = r.cfg.DB.ListenActions(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				r.log.Warn("outbox relay cannot listen; polling meanwhile", "err", err)
				if peakdesk.Sleep(ctx, reconnect.NextBackOff()) != nil {
					return
				}
				continue
			}
			reconnect.Reset()
			r.nudge() // notifications may have gone by while disconnected
		}
		if err := l.Wait(ctx); err != nil {
			l.Close()
			l = nil
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("outbox relay lost its listening connection", "err", err)
			continue
		}
		r.nudge()
	}
}

// loop claims as many due actions as there are free slots, whenever woken
// by a notification or the poll interval. While a backlog keeps every slot
// busy it refills in batches (a quarter of the slots at a time), so claims
// do not become one query per finished action.
func (r *Relay) loop(ctx context.Context) {
	defer close(r.loopDone)
	ticker := time.NewTicker(r.cfg.PollInterval)
	defer ticker.Stop()
	refill := max(1, cap(r.slots)/4)
	backlogged := false
	for {
		free := min(cap(r.slots)-len(r.slots), maxClaim)
		if free > 0 && (!backlogged || free >= refill) {
			// A claim is not cut short by Stop: what it claims, it runs.
			claimCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.AttemptTimeout)
			actions, err := r.cfg.DB.ClaimActions(claimCtx, r.cfg.ID, r.cfg.Now(), r.cfg.Lease, free)
			cancel()
			if err != nil {
				r.log.Warn("outbox relay claim failed", "err", err)
			}
			for _, a := range actions {
				r.slots <- struct{}{} // never blocks: only this loop takes slots
				r.inflight.Add(1)
				r.metrics.inflight.Inc()
				go r.run(a)
			}
			backlogged = err == nil && len(actions) == free
			if ctx.Err() != nil {
				return
			}
			if backlogged && len(r.slots) < cap(r.slots) {
				continue
			}
		}
		// Freed slots matter only while slots are what limits us.
		var freed <-chan struct{}
		if backlogged || free == 0 {
			freed = r.freed
		}
		select {
		case <-ctx.Done():
			return
		case <-freed:
		case <-r.wake:
			backlogged = false
		case <-ticker.C:
			backlogged = false
		}
	}
}

// run carries out one attempt of a and records it.
func (r *Relay) run(a peakdesk.Action) {
	defer func() {
		<-r.slots
		r.metrics.inflight.Dec()
		select {
		case r.freed <- struct{}{}:
		default:
		}
		r.inflight.Done()
	}()
	// Every attempt is a span of the trace of the message that promised
	// the action (a trace of its own when unknown): the shop calls carry
	// it, and so do the logs.
	trace := peakdesk.ContinueTrace(a.Trace)
	log := r.log.With("trace_id", trace.ID, "action_id", a.ID, "shop", a.ShopID, "kind", string(a.Kind),
		"conversation_id", a.ConversationID)
	start := r.cfg.Now()
	ctx, cancel := context.WithTimeout(peakdesk.WithTrace(r.workCtx, trace), r.cfg.AttemptTimeout)
	out := r.execute(ctx, a)
	cancel()
	if r.killed.Load() {
		return
	}
	if r.workCtx.Err() != nil && out.kind != peakdesk.AttemptSucceeded && out.kind != peakdesk.AttemptRejected {
		out = outcome{kind: peakdesk.AttemptAborted, err: "the relay stopped before the shop answered: " + out.err}
	}
	end := r.cfg.Now()
	res := r.decide(a, out, end)

	// Record with a context of our own: a stopping relay still writes down
	// what happened.
	bg, cancelBG := context.WithTimeout(peakdesk.WithTrace(context.WithoutCancel(r.workCtx), trace), r.cfg.AttemptTimeout)
	defer cancelBG()
	if a.Kind == peakdesk.ActionOrderFollowUp && res.State == peakdesk.ActionDead {
		p := followUpPayload(a)
		text := r.desk.texts.Text(bg, a.ShopID, p.Lang, texts.HandoffOrderLookup, nil)
		if err := r.cfg.OnHandoff(bg, a, text, res.LastError); err != nil {
			log.Error("order follow-up: handoff failed", "err", err)
			res.LastError += "; handoff to a human failed: " + err.Error()
		} else {
			r.orders.final.WithLabelValues(finalHandoff).Observe(sinceAsked(p.AskedAt))
		}
	}
	res.Error, res.LastError = capText(res.Error, maxExcerpt), capText(res.LastError, maxExcerpt)
	applied, err := r.cfg.DB.FinishAttempt(bg, res)
	r.metrics.attempts.WithLabelValues(string(a.Kind), out.kind).Inc()
	r.metrics.attemptSeconds.WithLabelValues(string(a.Kind)).Observe(end.Sub(start).Seconds())
	switch {
	case err != nil:
		// The lease expires and another attempt (idempotent at the shop)
		// follows.
		log.Error("outbox attempt not recorded", "attempt", a.Attempts, "outcome", out.kind, "err", err)
	case !applied:
		r.metrics.leaseLost.Inc()
		log.Warn("outbox attempt finished after its lease was lost", "attempt", a.Attempts, "outcome", out.kind)
	case res.State == peakdesk.ActionDead:
		log.Warn("outbox action is dead", "attempts", a.Attempts, "http_status", out.status, "err", res.LastError)
	case res.State == peakdesk.ActionRetrying:
		log.Debug("outbox action will retry", "attempt", a.Attempts, "next_attempt_at", res.NextAttemptAt, "err", out.err)
	}
}

// outcome is how an attempt ended.
type outcome struct {
	kind       string // a peakdesk.Attempt* outcome
	status     int
	err        string
	excerpt    string
	result     json.RawMessage
	retryAfter time.Duration
	keyReuse   bool
	// refused: egress refused the call (URL, address or redirect); the
	// shop did not refuse the key, which may have been used before.
	refused bool
}

// maxExcerpt bounds the response excerpt, the error and the last error kept
// per attempt: they are for operators to read, and the shop writes them.
const maxExcerpt = 512

// maxResult bounds the shop answer kept on a succeeded action.
const maxResult = 16 << 10

func excerpt(b []byte) string {
	// Sanitising may triple invalid bytes: cut generously first.
	return capText(string(b[:min(len(b), 4*maxExcerpt)]), maxExcerpt)
}

// capText makes s fit a Postgres text column an operator reads: valid
// UTF-8 without NUL bytes, at most n bytes, cut at a rune boundary and
// marked with "…" when cut.
func capText(s string, n int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// outcomeOf sorts a shop call's result: 2xx succeeded, transient statuses
// and transport errors failed, other 4xx and calls egress refused rejected.
func outcomeOf(resp *shopapi.Response, err error) outcome {
	if err == nil {
		o := outcome{kind: peakdesk.AttemptSucceeded, status: resp.Status, excerpt: excerpt(resp.Body)}
		if len(resp.Body) <= maxResult && json.Valid(resp.Body) {
			o.result = resp.Body
		}
		return o
	}
	if re, ok := errors.AsType[*egress.RefusedError](err); ok {
		return outcome{kind: peakdesk.AttemptRejected, status: re.Status, err: re.Error(), refused: true}
	}
	var se *shopapi.Error
	if errors.As(err, &se) {
		o := outcome{kind: peakdesk.AttemptFailed, status: se.Status, err: se.Error(), excerpt: excerpt(se.Body),
			retryAfter: se.RetryAfter}
		if !se.Transient() {
			o.kind, o.keyReuse = peakdesk.AttemptRejected, se.KeyReuse()
		}
		return o
	}
	return outcome{kind: peakdesk.AttemptFailed, err: err.Error()}
}

func rejectPayload(a peakdesk.Action, err error) outcome {
	return outcome{kind: peakdesk.AttemptRejected, err: fmt.Sprintf("the %s payload is not valid: %v", a.Kind, err)}
}

// execute makes one attempt of a at the shop.
func (r *Relay) execute(ctx context.Context, a peakdesk.Action) outcome {
	switch a.Kind {
	case peakdesk.ActionCouponIssue:
		var p CouponPayload
		if err := json.Unmarshal(a.Payload, &p); err != nil {
			return rejectPayload(a, err)
		}
		return outcomeOf(r.cfg.Shop.CreateCoupon(ctx, a.ShopID, a.AttemptKey(),
			shopapi.CouponRequest{OrderID: p.OrderID, UserID: p.UserID, AmountCents: p.AmountCents, Reason: p.Reason}))
	case peakdesk.ActionRefundRequest:
		var p RefundPayload
		if err := json.Unmarshal(a.Payload, &p); err != nil {
			return rejectPayload(a, err)
		}
		return outcomeOf(r.cfg.Shop.CreateRefund(ctx, a.ShopID, a.AttemptKey(),
			shopapi.RefundRequest{OrderID: p.OrderID, AmountCents: p.AmountCents, Reason: p.Reason}))
	case peakdesk.ActionWebhookDeliver:
		var ev struct {
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal(a.Payload, &ev); err != nil {
			return rejectPayload(a, err)
		}
		return outcomeOf(r.cfg.Shop.DeliverWebhook(ctx, a.ShopID, cmp.Or(ev.EventID, a.IdempotencyKey),
			a.AttemptKey(), a.Payload))
	case peakdesk.ActionOrderFollowUp:
		return r.followUp(ctx, a)
	}
	return outcome{kind: peakdesk.AttemptRejected, err: fmt.Sprintf("unknown action kind %q", a.Kind)}
}

// followUp asks the order question again and, once the shop answers,
// pushes the answer through OnFollowUp. The answer may be the facts, "not
// found" or the customer's recent orders to choose from: whatever the shop
// says, the customer gets one final answer.
func (r *Relay) followUp(ctx context.Context, a peakdesk.Action) outcome {
	var p FollowUpPayload
	if err := json.Unmarshal(a.Payload, &p); err != nil {
		return rejectPayload(a, err)
	}
	if p.UserID == "" {
		return rejectPayload(a, errors.New("user_id is required"))
	}
	ans, err := r.desk.answer(ctx, a.ShopID, p.UserID, cmp.Or(p.Lang, texts.DefaultLang), p.question())
	if err != nil {
		return outcomeOf(nil, err)
	}
	res := FollowUpResult{OrderID: p.OrderID, Order: ans.order, Logistics: ans.logistics, Text: ans.text}
	if err := r.cfg.OnFollowUp(ctx, a, res); err != nil {
		return outcome{kind: peakdesk.AttemptFailed, status: 200, err: "pushing the follow-up reply failed: " + err.Error()}
	}
	r.orders.final.WithLabelValues(finalFollowUp).Observe(sinceAsked(p.AskedAt))
	r.hurry(ctx, a.ShopID)
	body, _ := json.Marshal(struct {
		Order     *shopapi.Order     `json:"order,omitempty"`
		Logistics *shopapi.Logistics `json:"logistics,omitempty"`
		Text      string             `json:"text"`
	}{ans.order, ans.logistics, ans.text})
	return outcome{kind: peakdesk.AttemptSucceeded, status: 200, excerpt: excerpt(body), result: body}
}

// hurry brings the shop's other waiting follow-ups forward once one of them
// got through: the shop is back, and its customers need not wait out their
// backoff. At most once per FollowUpStep per shop and relay.
func (r *Relay) hurry(ctx context.Context, shop string) {
	now := r.cfg.Now()
	r.hurriedMu.Lock()
	if last, ok := r.hurried[shop]; ok && now.Sub(last) < r.cfg.FollowUpStep {
		r.hurriedMu.Unlock()
		return
	}
	r.hurried[shop] = now
	r.hurriedMu.Unlock()
	n, err := r.cfg.DB.HurryFollowUps(ctx, shop, now)
	if err != nil {
		r.log.Warn("bringing the shop's follow-ups forward failed", "shop", shop, "err", err)
	} else if n > 0 {
		r.log.Info("the shop answers again: its waiting order follow-ups retry now", "shop", shop, "follow_ups", n)
		r.nudge()
	}
}

// followUpPayload is a follow-up's payload, as far as it decodes.
func followUpPayload(a peakdesk.Action) FollowUpPayload {
	var p FollowUpPayload
	_ = json.Unmarshal(a.Payload, &p)
	p.Lang = cmp.Or(p.Lang, texts.DefaultLang)
	return p
}

// OrderFacts are the facts of order o and its parcel l (nil if unknown) for
// a customer text.
func OrderFacts(o *shopapi.Order, l *shopapi.Logistics) texts.OrderFacts {
	f := texts.OrderFacts{ID: o.ID, Status: o.Status, AmountCents: o.AmountCents, Currency: o.Currency,
		CreatedAt: o.CreatedAt}
	for _, it := range o.Items {
		f.Items = append(f.Items, texts.OrderItem{Name: it.Name, Quantity: it.Quantity})
	}
	if l != nil {
		f.Carrier, f.TrackingNo, f.ParcelStatus, f.ETA = l.Carrier, l.TrackingNo, l.Status, l.ETA
		if n := len(l.Events); n > 0 {
			ev := l.Events[n-1]
			f.LastScan = &texts.Scan{At: ev.At, Location: ev.Location, Description: ev.Description}
		}
	}
	return f
}

// decide turns an attempt's outcome into the action's next state.
func (r *Relay) decide(a peakdesk.Action, out outcome, now time.Time) storage.AttemptResult {
	res := storage.AttemptResult{
		ActionID: a.ID, N: a.Attempts, Owner: r.cfg.ID, Outcome: out.kind, HTTPStatus: out.status,
		Error: out.err, LastError: out.err, Excerpt: out.excerpt, EndedAt: now,
	}
	switch out.kind {
	case peakdesk.AttemptSucceeded:
		res.State, res.Result = peakdesk.ActionSucceeded, out.result
	case peakdesk.AttemptRejected:
		// A key the shop refused is spent (an operator retry takes a new
		// one); a refused call keeps its key: an earlier attempt may have
		// reached the shop under it before the URL changed.
		res.State, res.Rejected = peakdesk.ActionDead, !out.keyReuse && !out.refused
		res.LastError = "rejected by the shop: " + out.err
		if out.refused {
			res.LastError = "refused before sending: " + out.err
		}
	case peakdesk.AttemptAborted:
		// Not the shop's fault: retry at once, outside the run's budget.
		res.State, res.NextAttemptAt, res.Uncount = peakdesk.ActionRetrying, now, true
	default:
		if a.RunAttempts >= a.MaxAttempts {
			res.State = peakdesk.ActionDead
			res.LastError = fmt.Sprintf("gave up after %d attempts: %s", a.RunAttempts, out.err)
			break
		}
		schedule := &r.retry
		if a.Kind == peakdesk.ActionOrderFollowUp {
			schedule = &r.followUpRetry
		}
		wait := min(max(schedule.Wait(a.RunAttempts), out.retryAfter), r.cfg.MaxDelay)
		res.State, res.NextAttemptAt = peakdesk.ActionRetrying, now.Add(wait)
	}
	return res
}

// refreshMetrics keeps the action gauges current.
func (r *Relay) refreshMetrics(ctx context.Context) {
	defer r.bg.Done()
	t := time.NewTicker(r.cfg.MetricsInterval)
	defer t.Stop()
	for {
		if err := r.updateGauges(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("outbox metrics refresh failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Relay) updateGauges(ctx context.Context) error {
	counts, err := r.cfg.DB.ActionCounts(ctx, r.cfg.SucceededCountEvery)
	if err != nil {
		return err
	}
	seen := map[[2]string]float64{}
	pending := 0.0
	for _, c := range counts {
		seen[[2]string{string(c.State), string(c.Kind)}] = float64(c.Count)
		if c.Kind == peakdesk.ActionOrderFollowUp && !c.State.Final() {
			pending += float64(c.Count)
		}
	}
	r.orders.pending.Set(pending)
	for _, k := range peakdesk.ActionKinds {
		for _, s := range peakdesk.ActionStates {
			r.metrics.actions.WithLabelValues(string(s), string(k)).Set(seen[[2]string{string(s), string(k)}])
		}
	}
	now := r.cfg.Now()
	oldest, ok, err := r.cfg.DB.OldestDue(ctx, now)
	if err != nil {
		return err
	}
	if ok {
		r.metrics.oldestDue.Set(max(now.Sub(oldest).Seconds(), 0))
	} else {
		r.metrics.oldestDue.Set(0)
	}
	return nil
}
