// Package shedwriter stores the answers the ingest edge gives the messages
// it sheds, many per Postgres transaction. When admission control sheds a
// message that the shop's FAQ answers, the edge answers at once and
// publishes the message with its answer to CHAT_IN on chat.shed.<shop> —
// acked by JetStream like an accepted message, in the same duplicate window
// — instead of a transaction per request. The Writer consumes those records
// (durable consumer shed-writer) and group-commits them: message, reply and
// webhook action per record, idempotent by message and reply id
// (storage.SaveShedAnswers); then it publishes each stored reply's event
// to CHAT_EVENTS (deduplicated by reply id) and only then acks. A message
// whose conversation a human agent owns is stored for the agent without
// the answer, and announced to the agents instead. A writer
// that dies anywhere leaves its records unacked, to be redelivered and
// stored once. It runs in the worker role; many may run.
package shedwriter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// Config configures a Writer. JS and DB are required.
type Config struct {
	JS jetstream.JetStream
	DB *storage.DB
	// Webhook builds a stored reply's webhook.deliver action
	// (outbox.ReplyWebhook), inserted in the batch's transaction for shops
	// with a webhook URL; nil: none. It may be called more than once for
	// the same reply, so it must be deterministic (the action's idempotency
	// key keeps one).
	Webhook func(*peakdesk.Reply) (peakdesk.Action, error)
	// MaxBatch caps the records of one transaction. Default 500.
	MaxBatch int
	// Committers is how many transactions may run at once. Default 2.
	Committers int
	// Buffered caps the records fetched and not yet committed (the pull's
	// buffer plus the hand-over to the committers). Default 4 × MaxBatch.
	Buffered int
	// RetryDelay is how long a record whose batch failed waits before it is
	// delivered again. Default 1 s.
	RetryDelay time.Duration
	// BacklogRefresh is how often the backlog gauge reads consumer info.
	// Default 2 s.
	BacklogRefresh time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; defaults to a private registry.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	c.MaxBatch = cmp.Or(c.MaxBatch, 500)
	c.Committers = cmp.Or(c.Committers, 2)
	c.Buffered = cmp.Or(c.Buffered, 4*c.MaxBatch)
	c.RetryDelay = cmp.Or(c.RetryDelay, time.Second)
	c.BacklogRefresh = cmp.Or(c.BacklogRefresh, 2*time.Second)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
}

func (c *Config) validate() error {
	switch {
	case c.JS == nil:
		return errors.New("shedwriter: config: JS is required")
	case c.DB == nil:
		return errors.New("shedwriter: config: DB is required")
	case c.MaxBatch < 1:
		return errors.New("shedwriter: config: MaxBatch must be positive")
	case c.Committers < 1:
		return errors.New("shedwriter: config: Committers must be positive")
	case c.Buffered < c.MaxBatch:
		return errors.New("shedwriter: config: Buffered must be at least MaxBatch")
	}
	return nil
}

// Writer consumes shed answers from CHAT_IN and stores them in batches.
type Writer struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	js      jetstream.JetStream // bounded async publishes of reply events

	records chan jetstream.Msg // fetched, waiting for a committer
	quit    chan struct{}      // closed by Stop: committers finish up
	cc      jetstream.ConsumeContext
	cons    jetstream.Consumer

	wg        sync.WaitGroup
	startOnce sync.Once
	stopOnce  sync.Once
}

// New returns a Writer for cfg. Call Start to run it.
func New(cfg Config) (*Writer, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	w := &Writer{cfg: cfg, log: cfg.Logger.With("component", "shedwriter"),
		records: make(chan jetstream.Msg, cfg.MaxBatch), quit: make(chan struct{})}
	m, err := newMetrics(cfg.Registerer, func() float64 { return float64(len(w.records)) })
	if err != nil {
		return nil, fmt.Errorf("shedwriter: metrics: %w", err)
	}
	w.metrics = m
	return w, nil
}

// Start begins consuming. It returns once the consumer is in place, or
// fails fast.
func (w *Writer) Start(ctx context.Context) error {
	cons, err := w.cfg.JS.Consumer(ctx, queue.StreamIn, queue.ConsumerShedWriter)
	if err != nil {
		return fmt.Errorf("shedwriter: consumer %s: %w", queue.ConsumerShedWriter, err)
	}
	js, err := jetstream.New(w.cfg.JS.Conn(), jetstream.WithPublishAsyncMaxPending(2*w.cfg.MaxBatch))
	if err != nil {
		return fmt.Errorf("shedwriter: %w", err)
	}
	// The pull asks for at most what the buffer may hold; the hand-over
	// channel holds one batch more.
	pull := max(w.cfg.Buffered-w.cfg.MaxBatch, 1)
	var startErr error
	w.startOnce.Do(func() {
		w.cons, w.js = cons, js
		w.cc, startErr = cons.Consume(w.receive, jetstream.PullMaxMessages(pull),
			jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
				if !errors.Is(err, jetstream.ErrNoHeartbeat) {
					w.log.Debug("consume", "err", err)
				}
			}))
		if startErr != nil {
			return
		}
		for range w.cfg.Committers {
			w.wg.Go(w.commitLoop)
		}
		w.wg.Go(w.backlogLoop)
	})
	if startErr != nil {
		return fmt.Errorf("shedwriter: consume: %w", startErr)
	}
	return nil
}

// Stop stops fetching, commits what was fetched and waits. It is
// idempotent. Records it could not commit (the database gone) are
// delivered again.
func (w *Writer) Stop() {
	w.stopOnce.Do(func() {
		if w.cc != nil {
			// Drain hands what the pull buffered to receive, and the
			// committers store it, so a stopping writer leaves nothing to
			// wait out AckWait.
			w.cc.Drain()
			select {
			case <-w.cc.Closed():
			case <-time.After(10 * time.Second):
				w.cc.Stop()
			}
		}
		close(w.quit)
		w.wg.Wait()
	})
}

// receive hands a fetched record to the committers; a full hand-over
// holds the pull back, which is the writer's bound.
func (w *Writer) receive(m jetstream.Msg) {
	select {
	case w.records <- m:
	case <-w.quit:
		_ = m.Nak() // stopping: someone else stores it
	}
}

// commitLoop gathers what has arrived into a batch — nothing waits for a
// timer: a lone record is committed at once, and records arriving during a
// commit form the next batch — until Stop.
func (w *Writer) commitLoop() {
	batch := make([]jetstream.Msg, 0, w.cfg.MaxBatch)
	for {
		var first jetstream.Msg
		select {
		case first = <-w.records:
		case <-w.quit:
			// Commit what was handed over already, then end.
			for {
				batch = w.gather(batch[:0])
				if len(batch) == 0 {
					return
				}
				w.commit(batch)
			}
		}
		batch = w.gather(append(batch[:0], first))
		w.commit(batch)
	}
}

func (w *Writer) gather(batch []jetstream.Msg) []jetstream.Msg {
	for len(batch) < w.cfg.MaxBatch {
		select {
		case m := <-w.records:
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

// commit decodes a batch and stores it (see store): a record is acked once
// stored and its event published, nak'ed with a delay otherwise. Results
// are recorded even while stopping.
func (w *Writer) commit(batch []jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	answers := make([]storage.ShedAnswer, 0, len(batch))
	msgs := make([]jetstream.Msg, 0, len(batch))
	for _, m := range batch {
		rec, err := queue.DecodeShed(m.Data())
		if err != nil {
			// Never written by an edge: nothing to store, ever.
			w.log.Error("dropping a malformed shed record", "subject", m.Subject(), "err", err)
			w.metrics.records.WithLabelValues("malformed").Inc()
			_ = m.Term()
			continue
		}
		rec.Reply.MessageIDs = []string{rec.Message.ID}
		answers = append(answers, storage.ShedAnswer{Message: &rec.Message, Reply: &rec.Reply,
			Trace: m.Headers().Get(peakdesk.TraceHeader), Actions: rec.Actions})
		msgs = append(msgs, m)
	}
	if len(answers) == 0 {
		return
	}
	w.store(ctx, answers, msgs)
}

// store saves answers, fetched as msgs, in one transaction, publishes the
// stored replies' events and settles every record. A batch the database
// refuses (or that cannot be built) is split in halves, each stored on its
// own, so that one record that can never be stored — retried alone, never
// dropped — holds back no other; a database that cannot be reached is not
// asked again at once: the whole batch is delivered again after RetryDelay.
func (w *Writer) store(ctx context.Context, answers []storage.ShedAnswer, msgs []jetstream.Msg) {
	w.metrics.batch.Observe(float64(len(answers)))
	start := time.Now()
	outcomes, err := w.cfg.DB.SaveShedAnswers(ctx, answers, w.cfg.Webhook)
	w.metrics.commit.Observe(time.Since(start).Seconds())
	if err != nil && len(answers) > 1 && refused(err) && ctx.Err() == nil {
		w.log.Warn("a batch of shed answers was refused; its halves are stored apart", "records", len(answers), "err", err)
		half := len(answers) / 2
		w.store(ctx, answers[:half], msgs[:half])
		w.store(ctx, answers[half:], msgs[half:])
		return
	}
	if err != nil {
		w.log.Warn("storing shed answers failed; they are retried", "records", len(answers), "err", err)
		w.metrics.records.WithLabelValues("retried").Add(float64(len(answers)))
		for _, m := range msgs {
			_ = m.NakWithDelay(w.cfg.RetryDelay)
		}
		return
	}

	// The relays find the answers' webhooks and follow-ups when they poll;
	// one notification for the batch brings them at once (after the
	// commit: a NOTIFY in the transaction would serialise the commits).
	if slices.Contains(outcomes, storage.ShedStored) {
		if err := w.cfg.DB.NotifyRelays(ctx); err != nil {
			w.log.Debug("waking the relays failed; they find the actions when they poll", "err", err)
		}
	}

	// Publish the events of the answers that are their messages' (again,
	// for a redelivered record: CHAT_EVENTS drops the repeat by reply id).
	futures := make([]jetstream.PubAckFuture, len(answers))
	for i, a := range answers {
		if outcomes[i] != storage.ShedStored {
			continue
		}
		ev, err := queue.ReplyEventMsg(a.Reply)
		if err == nil {
			futures[i], err = w.js.PublishMsgAsync(ev)
		}
		if err != nil {
			w.log.Warn("publishing a shed answer's event failed; it is retried", "reply_id", a.Reply.ID, "err", err)
		}
	}
	for i, a := range answers {
		m := msgs[i]
		switch outcomes[i] {
		case storage.ShedHuman:
			// A human agent took the conversation after the edge looked
			// (storage.SaveShedAnswers says why the answer the edge gave
			// is not stored): the message is the agent's. Tell the agents,
			// as a worker does for a message it stores for them; no reply
			// event. A failed announcement is retried with the record
			// (storing it again is a no-op, announcing it again too).
			if !w.announce(ctx, a.Message) {
				w.metrics.records.WithLabelValues("retried").Inc()
				_ = m.NakWithDelay(w.cfg.RetryDelay)
				continue
			}
		case storage.ShedRepeat:
			// The message was queued or answered before: its own answer stands.
			w.log.Info("a shed answer's message was stored already; the answer is not stored",
				"shop", a.Message.ShopID, "message_id", a.Message.ID, "reply_id", a.Reply.ID)
		case storage.ShedForeign:
			w.log.Warn("a shed answer names a conversation of another user; not stored",
				"shop", a.Message.ShopID, "message_id", a.Message.ID, "conversation_id", a.Message.ConversationID)
		}
		if outcomes[i] == storage.ShedStored && !w.published(ctx, futures[i]) {
			w.metrics.records.WithLabelValues("retried").Inc()
			_ = m.NakWithDelay(w.cfg.RetryDelay)
			continue
		}
		w.metrics.records.WithLabelValues(outcomes[i].String()).Inc()
		_ = m.Ack()
	}
}

// announce tells the agents of m, kept for them: its message.created
// webhook and the conversation's waiting priority (durable, idempotent),
// then, best effort, the agents following the conversation live.
func (w *Writer) announce(ctx context.Context, m *peakdesk.Message) bool {
	if err := w.cfg.DB.AnnounceHumanMessage(ctx, m); err != nil {
		w.log.Warn("announcing a shed message to the agents failed; it is retried", "shop", m.ShopID,
			"message_id", m.ID, "err", err)
		return false
	}
	w.log.Info("a shed message's conversation is a human agent's; the message is theirs, the FAQ answer is not stored",
		"shop", m.ShopID, "message_id", m.ID, "conversation_id", m.ConversationID)
	st := peakdesk.MessageState{ID: m.ID, ConversationID: m.ConversationID, Priority: m.Priority,
		Status: peakdesk.StatusQueued, Text: m.Text, CreatedAt: m.AcceptedAt}
	if err := queue.PublishDeskMessage(w.cfg.JS.Conn(), m.ShopID, &st); err != nil {
		w.log.Warn("showing a message to the agents live failed", "shop", m.ShopID, "message_id", m.ID, "err", err)
	}
	return true
}

// refused reports whether err is the database's (or the batch's own) rather
// than a failure to reach the database.
func refused(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return true
	}
	var netErr net.Error
	return !errors.As(err, &netErr) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, context.Canceled) && !pgconn.SafeToRetry(err)
}

// published waits for an event's publish ack.
func (w *Writer) published(ctx context.Context, f jetstream.PubAckFuture) bool {
	if f == nil {
		return false
	}
	select {
	case <-f.Ok():
		return true
	case <-f.Err():
		return false
	case <-ctx.Done():
		return false
	}
}

// backlogLoop keeps the backlog gauge: records in CHAT_IN not yet stored.
func (w *Writer) backlogLoop() {
	t := time.NewTicker(w.cfg.BacklogRefresh)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if info, err := w.cons.Info(ctx); err == nil {
			w.metrics.backlog.Set(float64(info.NumPending + uint64(info.NumAckPending)))
		}
		cancel()
		select {
		case <-t.C:
		case <-w.quit:
			return
		}
	}
}
