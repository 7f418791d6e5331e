// Package workers answers the chat messages queued in JetStream: it pulls
// them by priority within an adaptive concurrency limit, answers each
// conversation one turn at a time (messages that queue up meanwhile are
// answered together), keeps the LLM calls of all processes within the
// provider's rate limits, stores each reply exactly once in Postgres,
// publishes the reply event and only then acks. Messages that use up their
// deliveries are moved to the dead-letter queue.
package workers

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/texts"
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
	// Redis holds the provider budget shared by all worker processes;
	// defaults to Memory.Redis.
	Redis *redis.Client
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the worker's metrics; defaults to a private registry.
	Registerer prometheus.Registerer

	// Concurrency is the most messages one process answers at once: the
	// ceiling of the adaptive limit. Default 64.
	Concurrency int
	// MinConcurrency is the floor the adaptive limit backs off to when the
	// provider shows distress (429, 503, 529, timeouts, rising latency).
	// Default Concurrency/8, at least 1.
	MinConcurrency int
	// P1Weight and P2Weight share the slots p0 leaves between p1 and p2
	// while both have work. Defaults 4 and 1.
	P1Weight, P2Weight int
	// ProviderRPM and ProviderTPM are the LLM provider's requests and tokens
	// per minute for all worker processes together; 0 = unlimited.
	ProviderRPM, ProviderTPM int
	// ProviderKey names that budget in Redis (one per provider account and
	// model). Default "default".
	ProviderKey string
	// LLMTransport must be the transport of the Answerer's HTTP client for
	// the provider budget and the adaptive limit to apply: they then apply
	// to every HTTP call it makes (retries, fallback models, tool rounds).
	// Without it the concurrency stays at Concurrency, and ProviderRPM and
	// ProviderTPM must be 0.
	LLMTransport *LLMTransport

	// AckWait must match the consumers' AckWait; heartbeats go out at a
	// third of it, and a conversation's hold lasts as long. Default 30 s.
	AckWait time.Duration
	// IdleWait is how long an idle worker's blocking pulls wait before they
	// are renewed (and at most how long Stop waits for them). Default 1 s.
	IdleWait time.Duration
	// SoftStop is how long Stop lets in-flight messages finish before it
	// releases them for redelivery. Default 10 s.
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
	// sweeper takes it. Default 5 s.
	SweepGrace time.Duration
}

func (c *Config) setDefaults() {
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Redis == nil && c.Memory != nil {
		c.Redis = c.Memory.Redis
	}
	c.HistoryTurns = cmp.Or(c.HistoryTurns, 10)
	c.Concurrency = cmp.Or(c.Concurrency, 64)
	c.MinConcurrency = cmp.Or(c.MinConcurrency, max(c.Concurrency/8, 1))
	c.P1Weight = cmp.Or(c.P1Weight, 4)
	c.P2Weight = cmp.Or(c.P2Weight, 1)
	c.AckWait = cmp.Or(c.AckWait, 30*time.Second)
	c.IdleWait = cmp.Or(c.IdleWait, time.Second)
	c.SoftStop = cmp.Or(c.SoftStop, 10*time.Second)
	c.MaxBatch = cmp.Or(c.MaxBatch, 20)
	c.GatherWait = cmp.Or(c.GatherWait, 50*time.Millisecond)
	c.SweepInterval = cmp.Or(c.SweepInterval, time.Second)
	c.SweepGrace = cmp.Or(c.SweepGrace, 5*time.Second)
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
	case c.Concurrency < 1:
		return errors.New("workers: config: Concurrency must be at least 1")
	case c.MinConcurrency < 1 || c.MinConcurrency > c.Concurrency:
		return errors.New("workers: config: MinConcurrency must be within 1..Concurrency")
	case c.P1Weight < 1 || c.P2Weight < 1:
		return errors.New("workers: config: P1Weight and P2Weight must be at least 1")
	case c.ProviderRPM < 0 || c.ProviderTPM < 0:
		return errors.New("workers: config: ProviderRPM and ProviderTPM must not be negative")
	case (c.ProviderRPM > 0 || c.ProviderTPM > 0) && c.LLMTransport == nil:
		return errors.New("workers: config: ProviderRPM and ProviderTPM need LLMTransport")
	case c.IdleWait < time.Millisecond:
		return errors.New("workers: config: IdleWait must be at least 1 ms")
	case c.MaxBatch < 1:
		return errors.New("workers: config: MaxBatch must be at least 1")
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
	aimd      *AIMD
	limiter   *ProviderLimiter
	slots     *slots
	claims    claimLine
	pulls     atomic.Int64 // pull requests sent to the priority consumers
	tools     []llm.Tool   // Config.Tools as offered to the LLM

	startOnce, stopOnce sync.Once
	fetchCancel         context.CancelFunc // stops fetching, sweeping, dead letters
	workCancel          context.CancelFunc // cancels work in flight
	fetchDone           chan struct{}
	bg                  sync.WaitGroup // parked pulls, sweeper, dead letters
	inflight            sync.WaitGroup
}

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
	w := &Worker{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "worker"),
		metrics:   m,
		aimd:      NewAIMD(AIMDConfig{Min: cfg.MinConcurrency, Max: cfg.Concurrency}),
		slots:     newSlots(cfg.Concurrency),
		fetchDone: make(chan struct{}),
	}
	w.limiter = NewProviderLimiter(ProviderLimitConfig{
		Redis: cfg.Redis, Key: cfg.ProviderKey, RPM: cfg.ProviderRPM, TPM: cfg.ProviderTPM, Logger: w.log,
	})
	w.limiter.Waited = func(p peakdesk.Priority, d time.Duration) {
		m.rateWait.WithLabelValues(string(p)).Observe(d.Seconds())
	}
	w.limiter.Degraded = func(local bool) {
		m.rateLocal.Set(map[bool]float64{false: 0, true: 1}[local])
	}
	m.limit.Set(float64(cfg.Concurrency))
	if cfg.Tools != nil {
		for _, d := range cfg.Tools.Definitions() {
			w.tools = append(w.tools, llm.Tool{Name: d.Name, Description: d.Description, Parameters: d.Parameters})
		}
	}
	if cfg.LLMTransport != nil {
		cfg.LLMTransport.w.Store(w)
	}
	return w, nil
}

// observeCall feeds one LLM call to the adaptive limit.
func (w *Worker) observeCall(took time.Duration, s Signal) {
	inflight, _ := w.slots.counts()
	limit := w.aimd.Observe(took, s, inflight)
	w.slots.setLimit(limit)
	w.metrics.limit.Set(float64(limit))
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
	w.startOnce.Do(func() {
		w.consumers, w.deadCons = consumers, dead
		w.metrics.backlog.bind(consumers)
		fetchCtx, fetchCancel := context.WithCancel(context.Background())
		workCtx, workCancel := context.WithCancel(context.Background())
		w.fetchCancel, w.workCancel = fetchCancel, workCancel
		go newScheduler(w).fetchLoop(fetchCtx, workCtx)
		w.bg.Add(2)
		go func() { defer w.bg.Done(); w.sweep(fetchCtx, workCtx) }()
		go func() { defer w.bg.Done(); w.moveDeadLetters(fetchCtx) }()
	})
	return nil
}

// Stop stops fetching, lets in-flight messages finish for up to SoftStop,
// then cancels the rest, which are released for redelivery (their
// conversations are released at once for other workers). It waits for
// everything it started and is idempotent.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		if w.fetchCancel == nil {
			return
		}
		w.fetchCancel()
		<-w.fetchDone
		w.bg.Wait()
		done := make(chan struct{})
		go func() { w.inflight.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(w.cfg.SoftStop):
			w.log.Warn("soft stop timed out; releasing in-flight messages for redelivery")
			w.workCancel()
			<-done
		}
		w.workCancel()
	})
}

// start runs fn in a new goroutine in a slot the caller has taken.
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

// start answers msg in a slot the caller has taken. Its claim on its
// conversation waits for the claims of the same conversation's messages
// started before it in this process, so messages fetched together are
// claimed in queue order.
func (w *Worker) start(ctx context.Context, msg jetstream.Msg) {
	var key struct {
		Shop string `json:"shop"`
		Conv string `json:"conversation_id"`
	}
	_ = json.Unmarshal(msg.Data(), &key)
	after, claimed := w.claims.enter(key.Shop + "/" + key.Conv)
	w.startWork(func() { w.handle(ctx, msg, after, claimed) })
}

// claimLine orders the claims of one conversation's messages within this
// process: a message's claim waits until the one started before it is done.
type claimLine struct {
	mu    sync.Mutex
	tails map[string]chan struct{}
}

// enter joins key's line: after is closed when the previous claim is done
// (nil if none), done must be called once this claim is.
func (c *claimLine) enter(key string) (after <-chan struct{}, done func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tails == nil {
		c.tails = map[string]chan struct{}{}
	}
	prev, mine := c.tails[key], make(chan struct{})
	c.tails[key] = mine
	return prev, func() {
		c.mu.Lock()
		if c.tails[key] == mine {
			delete(c.tails, key)
		}
		c.mu.Unlock()
		close(mine)
	}
}

func (w *Worker) inflightCount() int {
	n, _ := w.slots.counts()
	return n
}

// handle takes one queued message. What it returns to JetStream decides the
// message's fate: ack once its answer is stored and published (or once it is
// stored to wait for its conversation), nak with a delay to retry, term for
// a message that can never be answered.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg, after <-chan struct{}, claimed func()) {
	claimDone := sync.OnceFunc(claimed)
	defer claimDone()
	var m peakdesk.Message
	if err := json.Unmarshal(msg.Data(), &m); err != nil || m.ID == "" || m.ShopID == "" || m.ConversationID == "" {
		w.log.Error("undecodable message terminated", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	log := w.log.With("trace_id", traceID(msg.Headers().Get("traceparent")), "shop", m.ShopID,
		"conversation_id", m.ConversationID, "message_id", m.ID)
	meta, err := msg.Metadata()
	if err != nil {
		log.Error("message without metadata", "err", err)
		_ = msg.Nak()
		return
	}
	ka := w.keepAlive(ctx, msg)
	defer ka.stop()

	if after != nil {
		select {
		case <-after:
		case <-ctx.Done():
		}
	}
	claim, err := w.cfg.DB.ClaimMessage(ctx, &m, newID(), w.cfg.AckWait, w.cfg.MaxBatch)
	claimDone()
	switch {
	case errors.Is(err, storage.ErrForeignConversation):
		log.Error("message names another user's conversation; terminated", "err", err)
		_ = msg.Term()
	case err != nil && ctx.Err() != nil:
		_ = msg.Nak()
	case err != nil:
		log.Error("storing the message failed; will retry", "delivery", meta.NumDelivered, "err", err)
		_ = msg.NakWithDelay(retryDelay(int(meta.NumDelivered)))
	case claim.Reply != nil:
		// A redelivery of an answered message: tell the client again, no
		// second answer.
		w.metrics.redelivered.Inc()
		if err := w.publishEvent(ctx, claim.Reply); err != nil {
			log.Warn("re-publishing a reply event failed; will retry", "err", err)
			_ = msg.NakWithDelay(retryDelay(int(meta.NumDelivered)))
			return
		}
		w.ack(log, msg)
	case claim.Failed:
		log.Warn("message was dead-lettered before; dropping this delivery")
		w.ack(log, msg)
	case claim.Waiting:
		// Another worker holds the conversation: the message is stored and
		// answered in that worker's next turn (or by the sweeper should it
		// die). Acking now means waiting costs no delivery attempts.
		w.metrics.waited.Inc()
		w.ack(log, msg)
	default:
		w.gather(ctx, log, claim.Hold)
		w.runTurns(ctx, log, ka, claim.Hold, msg)
	}
}

// gather waits GatherWait and adds the conversation's messages that came in
// meanwhile to hold. A saturated worker does not wait: its slots are what
// the backlog waits for, and a backlog spreads one customer's messages out
// (those fetched together are claimed in order anyway, see claimLine).
func (w *Worker) gather(ctx context.Context, log *slog.Logger, hold *storage.Hold) {
	if w.cfg.GatherWait <= 0 || len(hold.Messages) >= w.cfg.MaxBatch || w.slots.free() == 0 {
		return
	}
	if peakdesk.Sleep(ctx, w.cfg.GatherWait) != nil {
		return
	}
	if err := w.cfg.DB.TopUpHold(ctx, hold, w.cfg.MaxBatch); err != nil {
		log.Warn("gathering more messages failed; answering those held", "err", err)
	}
}

func (w *Worker) ack(log *slog.Logger, msg jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := msg.DoubleAck(ctx); err != nil {
		log.Warn("ack failed; a redelivery will find the work done", "err", err)
	}
}

// runTurns answers hold's messages, then whatever queued up in the
// conversation meanwhile, one turn after another, until nothing is left (the
// hold is given up in the same transaction that finds nothing). head is the
// queued message that got the hold (nil for the sweeper); it is acked after
// the first turn is stored.
func (w *Worker) runTurns(ctx context.Context, log *slog.Logger, ka *keepAlive, hold *storage.Hold, head jetstream.Msg) {
	var headID string
	if head != nil {
		var m peakdesk.Message
		_ = json.Unmarshal(head.Data(), &m)
		headID = m.ID
	}
	for hold != nil {
		turnCtx := ka.hold(ctx, hold)
		ans, err := w.compose(turnCtx, log, hold)
		if err != nil && errors.Is(context.Cause(turnCtx), storage.ErrTurnLost) {
			err = storage.ErrTurnLost
		}
		var next *storage.Hold
		var reply *peakdesk.Reply
		// A reply no queued message stands behind is published by the
		// sweeper should this worker die before it publishes it.
		eventPending := head == nil || !hold.Includes(headID)
		if err == nil {
			// From here on the work is done and must be recorded even if we
			// are asked to stop.
			reply = ans.Reply
			saveCtx, cancel := context.WithTimeout(context.WithoutCancel(turnCtx), 10*time.Second)
			next, err = w.cfg.DB.SaveTurn(saveCtx, hold, storage.TurnReply{
				Reply: reply, EventPending: eventPending, InTx: ans.inTx(),
			}, w.cfg.AckWait, w.cfg.MaxBatch)
			cancel()
		}
		ka.hold(ctx, nil)
		if err != nil {
			w.turnFailed(ctx, log, hold, head, err)
			return
		}
		w.answered(ctx, hold, reply)
		pubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = w.publishEvent(pubCtx, reply)
		if err == nil && eventPending {
			err = w.cfg.DB.EventPublished(pubCtx, reply.ShopID, reply.ID)
		}
		cancel()
		if err != nil {
			log.Warn("publishing a reply event failed; it will be re-published", "reply_id", reply.ID, "err", err)
		}
		if head != nil {
			if err != nil && !eventPending {
				// The redelivery re-publishes it.
				_ = head.NakWithDelay(time.Second)
			} else {
				w.ack(log, head)
			}
			head = nil
			ka.message(nil)
		}
		if next != nil && ctx.Err() != nil {
			// Stopping: hand the conversation over at once.
			relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = w.cfg.DB.ReleaseHold(relCtx, next)
			cancel()
			return
		}
		hold = next
	}
}

// answered records a stored reply in the metrics and the conversation memory.
func (w *Worker) answered(ctx context.Context, hold *storage.Hold, reply *peakdesk.Reply) {
	w.metrics.turnSize.Observe(float64(len(hold.Messages)))
	turns := make([]storage.Turn, 0, len(hold.Messages)+1)
	for _, m := range hold.Messages {
		w.metrics.answers.WithLabelValues(string(m.Priority), reply.Source).Inc()
		w.metrics.latency.WithLabelValues(string(m.Priority), reply.Source).
			Observe(reply.CreatedAt.Sub(m.AcceptedAt).Seconds())
		turns = append(turns, storage.Turn{Role: "user", Text: m.Text, At: m.AcceptedAt})
	}
	turns = append(turns, storage.Turn{Role: "assistant", Text: reply.Text, At: reply.CreatedAt})
	memCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	w.cfg.Memory.Append(memCtx, hold.ShopID, hold.ConversationID, turns...)
}

// turnFailed decides what a failed turn means for its messages and the
// queued message behind it.
func (w *Worker) turnFailed(ctx context.Context, log *slog.Logger, hold *storage.Hold, head jetstream.Msg, err error) {
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	switch {
	case ctx.Err() != nil:
		// Stopping: release both at once for another worker.
		_ = w.cfg.DB.ReleaseHold(bg, hold)
		if head != nil {
			_ = head.Nak()
		}
	case errors.Is(err, storage.ErrTurnLost):
		// Our hold expired and another worker took the conversation; it
		// answers these messages. A short delay lets the redelivery find
		// them answered.
		log.Warn("conversation hold lost; dropping this turn", "err", err)
		if head != nil {
			_ = head.NakWithDelay(time.Second)
		}
	default:
		log.Error("answer failed; will retry", "attempts", maxAttempts(hold), "err", err)
		delay := retryDelay(maxAttempts(hold))
		if err := w.cfg.DB.FailTurn(bg, hold, delay, err.Error()); err != nil {
			log.Warn("recording the failed turn failed; the hold expires by itself", "err", err)
		}
		if head != nil {
			_ = head.NakWithDelay(delay)
		}
	}
}

// retrySchedule is the worker's linear retry schedule: 1 s per attempt so
// far, at most 30 s.
var retrySchedule = peakdesk.LinearBackOff{Step: time.Second, Max: 30 * time.Second}

// retryDelay is the wait before the next attempt after attempts so far.
func retryDelay(attempts int) time.Duration {
	return retrySchedule.Wait(attempts)
}

func maxAttempts(hold *storage.Hold) int {
	n := 0
	for _, m := range hold.Messages {
		n = max(n, m.Attempts)
	}
	return n
}

// turnAnswer is what compose produced for a turn.
type turnAnswer struct {
	// Reply is the one reply to the turn's messages.
	Reply *peakdesk.Reply
	// Handoff marks the conversation for a human agent: a tool asked for
	// one, or the reply is the handoff reply.
	Handoff bool

	mu sync.Mutex
	// actions are the outbox actions the reply promises (the tools'); they
	// are stored in the reply's transaction (ReplyID and ConversationID
	// filled in).
	actions []peakdesk.Action
}

// inTx stores what comes with a's reply in its transaction: the actions the
// tools promised, the reply webhook (for shops with a webhook URL), and the
// handoff a tool asked for.
func (a *turnAnswer) inTx() func(context.Context, pgx.Tx, *peakdesk.Reply) error {
	return func(ctx context.Context, tx pgx.Tx, r *peakdesk.Reply) error {
		a.mu.Lock()
		actions := a.actions
		a.mu.Unlock()
		for i := range actions {
			actions[i].ReplyID = r.ID
			actions[i].ConversationID = cmp.Or(actions[i].ConversationID, r.ConversationID)
		}
		if _, err := storage.InsertActions(ctx, tx, actions); err != nil {
			return err
		}
		// The webhook tells the shop what its customer was told; whether a
		// partial text preceded it is the chat client's business.
		hooked := *r
		hooked.ReplacesPartial = false
		wh, err := outbox.ReplyWebhook(&hooked)
		if err != nil {
			return err
		}
		if _, err := storage.InsertReplyWebhook(ctx, tx, wh); err != nil {
			return err
		}
		if a.Handoff && r.Source != peakdesk.SourceHandoff {
			// SaveTurn marks handoff replies itself; a tool's handoff comes
			// with the LLM's reply.
			return storage.MarkHandoff(ctx, tx, r.ShopID, r.ConversationID)
		}
		return nil
	}
}

// callTool returns the Request.CallTool of a turn: it runs the tool for the
// turn's shop, user, conversation and message (sharing the turn's allowance
// of one money promise) and keeps the actions the tool promised for the
// reply's transaction. They are kept even if the LLM fails afterwards and
// the turn ends in a fallback: the tool checked them and the customer is
// told a human follows up.
func (a *turnAnswer) callTool(tools *outbox.Turn) func(context.Context, string, json.RawMessage) (answer.ToolOutcome, error) {
	return func(ctx context.Context, name string, args json.RawMessage) (answer.ToolOutcome, error) {
		res, err := tools.Call(ctx, name, args)
		if err != nil {
			return answer.ToolOutcome{}, err
		}
		a.mu.Lock()
		a.actions = append(a.actions, res.Actions...)
		a.mu.Unlock()
		return answer.ToolOutcome{Text: res.Text, Handoff: res.Handoff}, nil
	}
}

// compose produces the one reply to hold's messages: the Answerer's answer
// to all of them together (the LLM's, or its fallback: FAQ, handoff), so no
// message goes unanswered. This is the single place that turns messages
// into a reply (and the actions it promises). It fails only when ctx ends
// or the conversation memory cannot be read.
func (w *Worker) compose(ctx context.Context, log *slog.Logger, hold *storage.Hold) (*turnAnswer, error) {
	msgs := hold.Messages
	last := msgs[len(msgs)-1]
	reply := &peakdesk.Reply{
		ID:             newID(),
		ShopID:         hold.ShopID,
		ConversationID: hold.ConversationID,
		MessageIDs:     hold.MessageIDs(),
	}
	history, err := w.cfg.Memory.Load(ctx, hold.ShopID, hold.ConversationID, reply.MessageIDs)
	if err != nil {
		return nil, err
	}
	if len(history) > w.cfg.HistoryTurns {
		history = history[len(history)-w.cfg.HistoryTurns:]
	}
	prio := peakdesk.P2
	lines := make([]string, len(msgs))
	for i, m := range msgs {
		lines[i] = m.Text
		if m.Priority.Rank() < prio.Rank() {
			prio = m.Priority
		}
	}
	req := answer.Request{
		Shop:           hold.ShopID,
		ConversationID: hold.ConversationID,
		User:           last.UserID,
		MessageIDs:     reply.MessageIDs,
		Priority:       prio,
		// The budget counts from now, not from acceptance: after a backlog
		// the queued messages still get the LLM's answer.
		Deadline: time.Now().Add(w.cfg.Budgets[prio]),
		History:  make([]llm.Turn, len(history)),
		Question: strings.Join(lines, "\n"),
	}
	for i, t := range history {
		req.History[i] = llm.Turn{Role: llm.Role(t.Role), Text: t.Text}
	}
	ta := &turnAnswer{Reply: reply}
	if len(w.tools) > 0 && offerTools(prio, len(history) > 0, req.Question) {
		req.Tools = w.tools
		req.CallTool = ta.callTool(w.cfg.Tools.Turn(outbox.ToolCall{Shop: hold.ShopID, User: last.UserID,
			ConversationID: hold.ConversationID, MessageID: last.ID,
			Lang: texts.Detect(req.Question, texts.DefaultLang)}))
	}
	// Urgent answers stream to the client as they are written; p2, the
	// bulk of a peak and mostly general questions, arrives whole.
	var stream *partials
	if prio != peakdesk.P2 {
		stream = w.newPartials(reply)
		req.OnDelta = stream.add
	}

	// The provider budget and the adaptive limit apply in the LLM client's
	// transport, to every call the Answerer makes for this priority.
	ans, err := w.cfg.Answerer.Answer(withPriority(ctx, prio), req)
	if err != nil {
		return nil, err
	}
	reply.Text, reply.Source, reply.Model = ans.Text, ans.Source, ans.Model
	reply.PromptTokens, reply.CompletionTokens = ans.PromptTokens, ans.CompletionTokens
	reply.CostMicroUSD = ans.CostMicroUSD
	reply.ReplacesPartial = ans.StreamBroken && stream.shown()
	ta.Handoff = ans.Handoff || ans.Source == peakdesk.SourceHandoff
	log.Debug("answered", "source", ans.Source, "tools", ans.ToolCalls, "handoff", ta.Handoff)
	return ta, nil
}

// offerTools decides whether a turn is offered the tools. A request with
// tools is never coalesced with identical questions nor answered from the
// cache, so a general question — p2 (pre-sale, general), opening its
// conversation, without an order-like number — goes without them: those
// are the bursts coalescing exists for. Urgent turns (refunds, orders,
// logistics) and turns that continue a conversation get them.
func offerTools(prio peakdesk.Priority, hasHistory bool, question string) bool {
	return prio != peakdesk.P2 || hasHistory || hasDigitRun(question, 5)
}

// hasDigitRun reports whether s has n ASCII or full-width digits in a row.
func hasDigitRun(s string, n int) bool {
	run := 0
	for _, r := range s {
		if (r >= '0' && r <= '9') || (r >= '０' && r <= '９') {
			if run++; run >= n {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}

// publishEvent publishes r on its conversation's event subject. The reply id
// is the Nats-Msg-Id, so a re-publish within the window is deduplicated.
func (w *Worker) publishEvent(ctx context.Context, r *peakdesk.Reply) error {
	return queue.PublishReplyEvent(ctx, w.cfg.JS, r)
}

// keepAlive keeps a handler's claims alive while it works: InProgress on the
// queued message every third of AckWait, so a long LLM call is not
// redelivered elsewhere, and the conversation hold renewed as often; if the
// hold is lost (renewal found another owner) the turn's context is
// cancelled with ErrTurnLost.
type keepAlive struct {
	w    *Worker
	mu   sync.Mutex
	msg  jetstream.Msg
	cur  *storage.Hold
	lost context.CancelCauseFunc
	done chan struct{}
	wg   sync.WaitGroup
}

func (w *Worker) keepAlive(ctx context.Context, msg jetstream.Msg) *keepAlive {
	ka := &keepAlive{w: w, msg: msg, done: make(chan struct{})}
	ka.wg.Add(1)
	go func() {
		defer ka.wg.Done()
		t := time.NewTicker(w.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				ka.beat(ctx)
			case <-ka.done:
				return
			}
		}
	}()
	return ka
}

func (ka *keepAlive) beat(ctx context.Context) {
	ka.mu.Lock()
	msg, hold, lost := ka.msg, ka.cur, ka.lost
	ka.mu.Unlock()
	if msg != nil {
		_ = msg.InProgress()
	}
	if hold == nil {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ka.w.cfg.AckWait/3)
	defer cancel()
	if err := ka.w.cfg.DB.RenewHold(rctx, hold, ka.w.cfg.AckWait); errors.Is(err, storage.ErrTurnLost) {
		lost(storage.ErrTurnLost)
	} else if err != nil {
		ka.w.log.Warn("renewing a conversation hold failed", "conversation_id", hold.ConversationID, "err", err)
	}
}

// hold starts keeping h alive and returns the context its turn runs in;
// hold(ctx, nil) stops.
func (ka *keepAlive) hold(ctx context.Context, h *storage.Hold) context.Context {
	ka.mu.Lock()
	defer ka.mu.Unlock()
	if ka.lost != nil {
		ka.lost(nil)
		ka.lost = nil
	}
	ka.cur = h
	if h == nil {
		return ctx
	}
	turnCtx, cancel := context.WithCancelCause(ctx)
	ka.lost = cancel
	return turnCtx
}

func (ka *keepAlive) message(msg jetstream.Msg) {
	ka.mu.Lock()
	ka.msg = msg
	ka.mu.Unlock()
}

func (ka *keepAlive) stop() {
	ka.hold(context.Background(), nil)
	close(ka.done)
	ka.wg.Wait()
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// traceID extracts the trace id from a W3C traceparent header.
func traceID(traceparent string) string {
	if len(traceparent) >= 35 {
		return traceparent[3:35]
	}
	return ""
}

func hasCJK(s string) bool {
	for _, r := range s {
		if r >= 0x4E00 && r <= 0x9FFF {
			return true
		}
	}
	return false
}
