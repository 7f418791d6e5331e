// Package workers answers the chat messages queued in JetStream: it pulls
// them by priority within an adaptive concurrency limit, answers each
// conversation one turn at a time (messages that queue up meanwhile are
// answered together), keeps the LLM calls of all processes within the
// provider's rate limits, stores each reply exactly once in Postgres,
// publishes the reply event and only then acks. Messages that use up their
// deliveries are moved to the dead-letter queue.
//
// What happens to a delivered message is a verdict its handler returns —
// ack, nak after a delay, term — and one function tells JetStream
// (verdict.go). The files follow the steps: worker.go (configuration and
// lifecycle), scheduler.go (what starts when a slot frees), handle.go
// (claim, turns, the verdict), compose.go (the reply and what it promises),
// handoff.go (a customer asking for a human), keepalive.go, sweeper.go,
// deadletters.go, and limits.go with transport.go (the adaptive concurrency
// limit and the provider budget, applied to every LLM call). While a human
// agent owns a conversation the bot is silent: its messages are stored for
// the agent and acked (storage's takeover).
package workers

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// Config configures a Worker. JS, DB, Memory and Answerer are required.
type Config struct {
	JS     jetstream.JetStream
	DB     *storage.DB
	Memory *storage.Memory
	// Answerer answers each turn with graded fallback (primary model,
	// secondary, FAQ, handoff); it answers unless the turn is cancelled.
	Answerer *answer.Answerer
	// Tools, when set, are offered to the LLM (lookup_order, issue_coupon,
	// request_refund, handoff_to_human); the actions they promise are
	// stored in the reply's transaction. Nil offers none.
	Tools *outbox.Tools
	// Budgets is the time an answer may take, by priority, counted from
	// when its turn starts (not from acceptance: after a backlog the queued
	// messages still get the LLM's answer rather than a fallback). A
	// priority left out gets its default: p0 15 s, p1 25 s, p2 40 s.
	Budgets map[peakdesk.Priority]time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the worker's metrics; defaults to a private registry.
	Registerer prometheus.Registerer

	// Limits are the process's adaptive concurrency limit and the LLM
	// provider's budget. Make the LLM client's LLMTransport on the same
	// Limits for them to apply to every HTTP call it makes (retries,
	// fallback models, tool rounds). Nil: at most 64 messages at once, no
	// budget.
	Limits *Limits

	// P1Weight and P2Weight share the slots p0 leaves between p1 and p2
	// while both have work. Defaults 4 and 1.
	P1Weight, P2Weight int

	// AckWait, when set, caps the AckWait the worker keeps its messages and
	// conversation holds alive by. Default: the shortest AckWait of the
	// priority consumers (p0's), read when the worker starts. Heartbeats
	// (InProgress, hold renewal) go out every third of it, and a
	// conversation's hold lasts as long, so the messages of a worker that
	// died come back within their consumer's AckWait and find their
	// conversation free.
	AckWait time.Duration
	// IdleWait is how long an idle worker's blocking pulls wait before they
	// are renewed (and at most how long Stop waits for them). Default 1 s.
	IdleWait time.Duration
	// SoftStop is how long Stop lets in-flight messages finish before it
	// hands them back for redelivery. Default 0: at once — in a rolling
	// deploy another worker answers them right away instead of this one
	// finishing slow LLM calls (a turn already being saved is always
	// finished).
	SoftStop time.Duration
	// HistoryTurns is how many earlier turns the LLM sees, at most
	// Memory.Turns (both default 10).
	HistoryTurns int
	// MaxBatch is the most messages of one conversation answered by one
	// reply. Default 20.
	MaxBatch int
	// GatherWait is how long a worker that just took a conversation waits
	// for more of its messages before answering: messages sent in quick
	// succession reach different workers at about the same time, and
	// whichever claims first answers them all, in order. A message that
	// reaches its worker later than that after a later one of its
	// conversation is answered in the next turn. Only a worker with free
	// slots waits. Default 50 ms; negative = do not wait.
	GatherWait time.Duration
	// SweepInterval is how often the sweeper looks for conversations nobody
	// holds that have unanswered messages, and for unpublished reply events.
	// Default 1 s.
	SweepInterval time.Duration
	// SweepGrace is how old such a message or reply must be before the
	// sweeper takes it. Default 2 s (a dead worker's conversations come back soon).
	SweepGrace time.Duration
	// CommitGroup is the most turns whose replies are stored in one
	// transaction (group commit: the turns ready at the same time share
	// it, each under a savepoint of its own; see storage.TurnCommitter).
	// Default 4, at most 60; 1 stores each turn in a transaction of its own.
	// A group's turns are stored one after another and every reply waits
	// for the group's commit, so a large group delays its first replies:
	// with 19,000 open streams, live delivery p99 was 325–336 ms at 32 and
	// 113–155 ms at 4, at the same answers/s (docs/performance.md).
	CommitGroup int
}

func (c *Config) setDefaults() {
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	c.HistoryTurns = cmp.Or(c.HistoryTurns, 10)
	c.P1Weight = cmp.Or(c.P1Weight, 4)
	c.P2Weight = cmp.Or(c.P2Weight, 1)
	c.IdleWait = cmp.Or(c.IdleWait, time.Second)
	c.MaxBatch = cmp.Or(c.MaxBatch, 20)
	c.GatherWait = cmp.Or(c.GatherWait, 50*time.Millisecond)
	c.SweepInterval = cmp.Or(c.SweepInterval, time.Second)
	c.SweepGrace = cmp.Or(c.SweepGrace, 2*time.Second)
	c.CommitGroup = cmp.Or(c.CommitGroup, 4)
	budgets := map[peakdesk.Priority]time.Duration{
		peakdesk.P0: 15 * time.Second, peakdesk.P1: 25 * time.Second, peakdesk.P2: 40 * time.Second,
	}
	for p, d := range c.Budgets {
		budgets[p] = d
	}
	c.Budgets = budgets
}

func (c *Config) validate() error {
	switch {
	case c.JS == nil:
		return errors.New("workers: config: JS is required")
	case c.DB == nil:
		return errors.New("workers: config: DB is required")
	case c.Memory == nil:
		return errors.New("workers: config: Memory is required")
	case c.Answerer == nil:
		return errors.New("workers: config: Answerer is required")
	case c.P1Weight < 1 || c.P2Weight < 1:
		return errors.New("workers: config: P1Weight and P2Weight must be at least 1")
	case c.Limits != nil && c.Limits.budgeted() && c.Limits.transports.Load() == 0:
		return errors.New("workers: config: Limits with a provider budget need an LLMTransport made on them")
	case c.IdleWait < time.Millisecond:
		return errors.New("workers: config: IdleWait must be at least 1 ms")
	case c.MaxBatch < 1:
		return errors.New("workers: config: MaxBatch must be at least 1")
	case c.AckWait < 0 || c.SoftStop < 0:
		return errors.New("workers: config: AckWait and SoftStop must not be negative")
	case c.CommitGroup < 1 || c.CommitGroup > 60:
		return errors.New("workers: config: CommitGroup must be 1 to 60")
	}
	for p, d := range c.Budgets {
		if _, err := peakdesk.ParsePriority(string(p)); err != nil {
			return fmt.Errorf("workers: config: Budgets: unknown priority %q", p)
		}
		if d <= 0 {
			return fmt.Errorf("workers: config: Budgets: the budget of %s must be positive", p)
		}
	}
	return nil
}

// Worker pulls messages from the priority consumers and answers them.
type Worker struct {
	cfg       Config
	log       *slog.Logger
	metrics   *workerMetrics
	consumers []jetstream.Consumer // by priority, most urgent first
	deadCons  jetstream.Consumer
	limits    *Limits
	slots     *slots // limits.slots: how many messages may start now
	claims    claimLine
	pulls     atomic.Int64 // pull requests sent to the priority consumers
	nAnswered atomic.Int64 // messages answered by this worker
	tools     []llm.Tool   // Config.Tools as offered to the LLM
	words     *handoffWords
	commits   *storage.TurnCommitter // stores the turns' replies, grouped
	beats     heartbeat              // keeps the handlers' messages and holds alive
	// ackWait is the shortest AckWait of the consumers (or Config.AckWait):
	// the lease of conversation holds; heartbeats every third of it.
	ackWait time.Duration

	startOnce, stopOnce sync.Once
	fetchCancel         context.CancelFunc // stops fetching, sweeping, dead letters
	workCancel          context.CancelFunc // cancels work in flight
	fetchDone           chan struct{}
	bg                  sync.WaitGroup // parked pulls, sweeper, dead letters
	inflight            sync.WaitGroup
	relayWake           chan struct{} // wakeRelays → notifyRelays
	relayStop           chan struct{}
	relayDone           chan struct{}
}

// Answered returns how many messages this worker has answered since it was
// made (the sum of peakdesk_answers_total, without gathering the registry).
func (w *Worker) Answered() int64 { return w.nAnswered.Load() }

// Tools returns the tools the worker offers the LLM (Config.Tools).
func (w *Worker) Tools() []llm.Tool { return w.tools }

// New returns a Worker for cfg.
func New(cfg Config) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newWorkerMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("workers: metrics: %w", err)
	}
	limits := cfg.Limits
	if limits == nil {
		if limits, err = NewLimits(LimitsConfig{Logger: cfg.Logger, Registerer: cfg.Registerer}); err != nil {
			return nil, err
		}
	}
	commits, err := storage.NewTurnCommitter(storage.TurnCommitterConfig{DB: cfg.DB, MaxTurns: cfg.CommitGroup,
		Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("workers: %w", err)
	}
	w := &Worker{
		commits:   commits,
		cfg:       cfg,
		log:       cfg.Logger.With("component", "worker"),
		metrics:   m,
		limits:    limits,
		slots:     limits.slots,
		fetchDone: make(chan struct{}),
		words:     &handoffWords{db: cfg.DB, log: cfg.Logger.With("component", "worker")},
		relayWake: make(chan struct{}, 1),
		relayStop: make(chan struct{}),
		relayDone: make(chan struct{}),
		// Until Start reads the consumers' (a worker a test drives
		// without starting it).
		ackWait: cmp.Or(cfg.AckWait, 30*time.Second),
	}
	w.beats.w = w
	if cfg.Tools != nil {
		for _, d := range cfg.Tools.Definitions() {
			w.tools = append(w.tools, llm.Tool{Name: d.Name, Description: d.Description, Parameters: d.Parameters})
		}
	}
	return w, nil
}

// Start binds to the priority consumers and the dead-letter consumer and
// starts fetching, sweeping and moving dead letters. It returns once the
// consumers are found, or fails fast.
func (w *Worker) Start(ctx context.Context) error {
	var consumers []jetstream.Consumer
	for _, p := range peakdesk.Priorities {
		c, err := w.cfg.JS.Consumer(ctx, queue.StreamIn, queue.ConsumerName(p))
		if err != nil {
			return fmt.Errorf("workers: consumer %s: %w", queue.ConsumerName(p), err)
		}
		consumers = append(consumers, c)
	}
	dead, err := w.cfg.JS.Consumer(ctx, queue.StreamAdvisories, queue.ConsumerDeadLetters)
	if err != nil {
		return fmt.Errorf("workers: consumer %s: %w", queue.ConsumerDeadLetters, err)
	}
	ackWait := w.cfg.AckWait
	for _, c := range consumers {
		if d := c.CachedInfo().Config.AckWait; d > 0 && (ackWait == 0 || d < ackWait) {
			ackWait = d
		}
	}
	if ackWait < 30*time.Millisecond {
		return fmt.Errorf("workers: AckWait %v of the consumers is too short", ackWait)
	}
	w.startOnce.Do(func() {
		w.consumers, w.deadCons, w.ackWait = consumers, dead, ackWait
		w.metrics.backlog.bind(consumers)
		fetchCtx, fetchCancel := context.WithCancel(context.Background())
		workCtx, workCancel := context.WithCancel(context.Background())
		w.fetchCancel, w.workCancel = fetchCancel, workCancel
		go func() { defer close(w.relayDone); w.notifyRelays(w.relayStop) }()
		go newScheduler(w).fetchLoop(fetchCtx, workCtx)
		w.bg.Add(2)
		go func() { defer w.bg.Done(); w.sweep(fetchCtx, workCtx) }()
		go func() { defer w.bg.Done(); w.moveDeadLetters(fetchCtx) }()
	})
	return nil
}

// Stop stops fetching, lets in-flight messages finish for up to SoftStop
// (default: not at all), then cancels the rest, which are handed back for
// redelivery at once (nak; their conversations are released for other
// workers). It waits for everything it started and is idempotent.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		if w.fetchCancel == nil {
			return
		}
		w.fetchCancel()
		if w.cfg.SoftStop == 0 {
			// Hand in-flight messages back now, not after the parked
			// pulls have come back.
			w.workCancel()
		}
		<-w.fetchDone
		w.bg.Wait()
		done := make(chan struct{})
		go func() { w.inflight.Wait(); close(done) }()
		if w.cfg.SoftStop > 0 {
			soft := time.NewTimer(w.cfg.SoftStop)
			defer soft.Stop()
			select {
			case <-done:
			case <-soft.C:
				w.log.Warn("soft stop timed out; releasing in-flight messages for redelivery")
				w.workCancel()
			}
		}
		<-done
		w.beats.stop()
		w.workCancel()
		w.commits.Wait() // the notes of published events
		close(w.relayStop)
		<-w.relayDone
	})
}

// startWork runs fn in a new goroutine in a slot the caller has taken.
func (w *Worker) startWork(fn func()) {
	w.inflight.Add(1)
	w.metrics.inflight.Set(float64(w.inflightCount()))
	go func() {
		defer func() {
			w.slots.release()
			w.metrics.inflight.Set(float64(w.inflightCount()))
			w.inflight.Done()
		}()
		fn()
	}()
}

func (w *Worker) inflightCount() int {
	n, _ := w.slots.counts()
	return n
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
