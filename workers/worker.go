// Package workers answers the chat messages queued in JetStream: it pulls
// them by priority, asks the LLM, stores each reply exactly once in
// Postgres, publishes the reply event and only then acks.
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
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// Completer is the LLM seam: the real client in production, the same client
// pointed at the simulator in dev and tests.
type Completer interface {
	Complete(ctx context.Context, turns []llm.Turn) (*llm.Completion, error)
}

// Config configures a Worker. JS, DB, Memory and LLM are required.
type Config struct {
	JS     jetstream.JetStream
	DB     *storage.DB
	Memory *storage.Memory
	LLM    Completer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the worker's metrics; defaults to a private registry.
	Registerer prometheus.Registerer
	// Concurrency is how many messages one process answers at once.
	// Default 64.
	Concurrency int
	// AckWait must match the consumers' AckWait; heartbeats go out at a
	// third of it. Default 30 s.
	AckWait time.Duration
	// IdlePoll is how long the fetch loop rests when every queue is empty.
	// Default 20 ms.
	IdlePoll time.Duration
	// LLMAttempts is how many deliveries may fail at the LLM before the
	// message is answered with a handoff to a human. Default 3.
	LLMAttempts int
	// SoftStop is how long Stop lets in-flight messages finish before it
	// releases them for redelivery. Default 10 s.
	SoftStop time.Duration
	// HistoryTurns is how many earlier turns the LLM sees. Default 10.
	HistoryTurns int
}

func (c *Config) setDefaults() {
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	c.Concurrency = cmp.Or(c.Concurrency, 64)
	c.AckWait = cmp.Or(c.AckWait, 30*time.Second)
	c.IdlePoll = cmp.Or(c.IdlePoll, 20*time.Millisecond)
	c.LLMAttempts = cmp.Or(c.LLMAttempts, 3)
	c.SoftStop = cmp.Or(c.SoftStop, 10*time.Second)
	c.HistoryTurns = cmp.Or(c.HistoryTurns, 10)
}

func (c *Config) validate() error {
	switch {
	case c.JS == nil:
		return errors.New("workers: config: JS is required")
	case c.DB == nil:
		return errors.New("workers: config: DB is required")
	case c.Memory == nil:
		return errors.New("workers: config: Memory is required")
	case c.LLM == nil:
		return errors.New("workers: config: LLM is required")
	case c.Concurrency < 1:
		return errors.New("workers: config: Concurrency must be at least 1")
	}
	return nil
}

// Worker pulls messages from the priority consumers and answers them.
type Worker struct {
	cfg       Config
	log       *slog.Logger
	metrics   *workerMetrics
	consumers []jetstream.Consumer // by priority, most urgent first

	slots chan struct{} // one token per message in flight

	startOnce, stopOnce sync.Once
	fetchCancel         context.CancelFunc // stops fetching
	workCancel          context.CancelFunc // cancels work in flight
	fetchDone           chan struct{}
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
	m.limit.Set(float64(cfg.Concurrency))
	return &Worker{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "worker"),
		metrics:   m,
		slots:     make(chan struct{}, cfg.Concurrency),
		fetchDone: make(chan struct{}),
	}, nil
}

// Start binds to the priority consumers and starts fetching. It returns once
// the consumers are found, or fails fast.
func (w *Worker) Start(ctx context.Context) error {
	for _, p := range peakdesk.Priorities {
		c, err := w.cfg.JS.Consumer(ctx, storage.StreamIn, storage.ConsumerName(p))
		if err != nil {
			return fmt.Errorf("workers: consumer %s: %w", storage.ConsumerName(p), err)
		}
		w.consumers = append(w.consumers, c)
	}
	w.startOnce.Do(func() {
		fetchCtx, fetchCancel := context.WithCancel(context.Background())
		workCtx, workCancel := context.WithCancel(context.Background())
		w.fetchCancel, w.workCancel = fetchCancel, workCancel
		go w.fetchLoop(fetchCtx, workCtx)
	})
	return nil
}

// Stop stops fetching, lets in-flight messages finish for up to SoftStop,
// then cancels the rest, which are released for redelivery. It waits for
// everything it started and is idempotent.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		if w.fetchCancel == nil {
			return
		}
		w.fetchCancel()
		<-w.fetchDone
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

// fetchLoop pulls only as many messages as there are free slots, always
// from the most urgent priority first, so nothing waits in a client buffer
// aging against its AckWait.
func (w *Worker) fetchLoop(fetchCtx, workCtx context.Context) {
	defer close(w.fetchDone)
	idle := time.NewTimer(0)
	defer idle.Stop()
	for {
		// Wait for at least one free slot.
		select {
		case w.slots <- struct{}{}:
			<-w.slots
		case <-fetchCtx.Done():
			return
		}
		got := 0
		for i, c := range w.consumers {
			free := cap(w.slots) - len(w.slots)
			if free == 0 {
				break
			}
			batch, err := c.FetchNoWait(free)
			if err != nil {
				w.log.Warn("fetch failed", "priority", peakdesk.Priorities[i], "err", err)
				continue
			}
			for msg := range batch.Messages() {
				w.slots <- struct{}{}
				w.inflight.Add(1)
				got++
				go func() {
					defer func() { <-w.slots; w.inflight.Done() }()
					w.handle(workCtx, msg)
				}()
			}
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				w.log.Warn("fetch batch failed", "priority", peakdesk.Priorities[i], "err", err)
			}
		}
		w.metrics.inflight.Set(float64(len(w.slots)))
		if got > 0 {
			continue
		}
		idle.Reset(w.cfg.IdlePoll)
		select {
		case <-idle.C:
		case <-fetchCtx.Done():
			return
		}
	}
}

// handle answers one message. Its outcome decides the message's fate: ack
// once the reply is stored and its event published, nak with a delay to
// retry, term for a message that can never be answered.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	var m peakdesk.Message
	if err := json.Unmarshal(msg.Data(), &m); err != nil || m.ID == "" || m.ShopID == "" {
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
	stopBeat := w.heartbeat(msg)
	defer stopBeat()

	err = w.answer(ctx, log, &m, meta)
	var retry *retryError
	switch {
	case err == nil:
		// Ack only after the reply is committed and its event published.
		if err := msg.DoubleAck(context.WithoutCancel(ctx)); err != nil {
			log.Warn("ack failed; the redelivery will find the reply stored", "err", err)
		}
	case errors.Is(err, storage.ErrForeignConversation):
		log.Error("message names another user's conversation; terminated", "err", err)
		_ = msg.Term()
	case ctx.Err() != nil:
		// Stopping: release the message at once for another worker.
		_ = msg.Nak()
	case errors.As(err, &retry):
		log.Warn("answer failed; will retry", "delivery", meta.NumDelivered, "err", err)
		_ = msg.NakWithDelay(retry.after)
	default:
		log.Error("answer failed; will retry", "delivery", meta.NumDelivered, "err", err)
		_ = msg.NakWithDelay(retryDelay(meta.NumDelivered))
	}
}

// retryError asks for redelivery after a delay.
type retryError struct {
	after time.Duration
	err   error
}

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

// retryDelay is the linear redelivery schedule: 1 s per delivery so far,
// at most 30 s.
func retryDelay(delivered uint64) time.Duration {
	return min(time.Duration(delivered)*time.Second, 30*time.Second)
}

func (w *Worker) answer(ctx context.Context, log *slog.Logger, m *peakdesk.Message, meta *jetstream.MsgMetadata) error {
	// 1. Record that we hold the message; a redelivery of an answered one
	// only re-publishes its event.
	existing, err := w.cfg.DB.BeginMessage(ctx, m)
	if err != nil {
		return err
	}
	if existing != nil {
		w.metrics.redelivered.Inc()
		return w.publishEvent(ctx, existing)
	}

	// 2. Ask the LLM with the conversation's recent turns.
	reply, err := w.compose(ctx, log, m, meta)
	if err != nil {
		return err
	}

	// 3. Store the reply exactly once; from here on the work is done and
	// must be recorded even if we are asked to stop.
	saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	switch err := w.cfg.DB.SaveReply(saveCtx, reply); {
	case errors.Is(err, storage.ErrAlreadyAnswered):
		w.metrics.redelivered.Inc()
		if reply, err = w.cfg.DB.ReplyFor(saveCtx, m.ShopID, m.ID); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		w.metrics.answers.WithLabelValues(string(m.Priority), reply.Source).Inc()
		w.metrics.latency.WithLabelValues(string(m.Priority), reply.Source).
			Observe(reply.CreatedAt.Sub(m.AcceptedAt).Seconds())
		w.cfg.Memory.Append(saveCtx, m.ShopID, m.ConversationID,
			storage.Turn{Role: "user", Text: m.Text, At: m.AcceptedAt},
			storage.Turn{Role: "assistant", Text: reply.Text, At: reply.CreatedAt})
	}

	// 4. Tell the client.
	return w.publishEvent(saveCtx, reply)
}

// compose produces the reply to m: the LLM's answer, or after LLMAttempts
// failed deliveries a handoff to a human, so no message goes unanswered.
func (w *Worker) compose(ctx context.Context, log *slog.Logger, m *peakdesk.Message, meta *jetstream.MsgMetadata) (*peakdesk.Reply, error) {
	reply := &peakdesk.Reply{
		ID:             newID(),
		ShopID:         m.ShopID,
		ConversationID: m.ConversationID,
		MessageIDs:     []string{m.ID},
	}
	history, err := w.cfg.Memory.Load(ctx, m.ShopID, m.ConversationID, []string{m.ID})
	if err != nil {
		return nil, err
	}
	turns := make([]llm.Turn, 0, len(history)+2)
	turns = append(turns, llm.Turn{Role: llm.RoleSystem, Text: systemPrompt(m.ShopID)})
	for _, t := range history {
		turns = append(turns, llm.Turn{Role: llm.Role(t.Role), Text: t.Text})
	}
	turns = append(turns, llm.Turn{Role: llm.RoleUser, Text: m.Text})

	start := time.Now()
	c, err := w.cfg.LLM.Complete(ctx, turns)
	w.metrics.llmSeconds.Observe(time.Since(start).Seconds())
	if err == nil {
		w.metrics.llmCalls.WithLabelValues(c.Model, "ok").Inc()
		reply.Text, reply.Source, reply.Model = c.Text, peakdesk.SourceLLM, c.Model
		reply.PromptTokens, reply.CompletionTokens = c.PromptTokens, c.CompletionTokens
		return reply, nil
	}
	w.metrics.llmCalls.WithLabelValues("", "error").Inc()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if int(meta.NumDelivered) < w.cfg.LLMAttempts {
		return nil, &retryError{after: retryDelay(meta.NumDelivered), err: err}
	}
	log.Warn("LLM failed on every attempt; handing off to a human", "attempts", meta.NumDelivered, "err", err)
	reply.Text, reply.Source = handoffText(m.Text), peakdesk.SourceHandoff
	return reply, nil
}

// publishEvent publishes r on its conversation's event subject. The reply id
// is the Nats-Msg-Id, so a re-publish within the window is deduplicated.
func (w *Worker) publishEvent(ctx context.Context, r *peakdesk.Reply) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("workers: encode reply: %w", err)
	}
	msg := nats.NewMsg(storage.EventSubject(r.ShopID, r.ConversationID))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, r.ID)
	if _, err := w.cfg.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("workers: publish reply event: %w", err)
	}
	return nil
}

// heartbeat tells JetStream we are still working on msg every third of its
// AckWait, so a long LLM call is not redelivered to another worker.
func (w *Worker) heartbeat(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(w.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				_ = msg.InProgress()
			case <-done:
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }
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

func systemPrompt(shop string) string {
	return "You are the customer-service assistant of the online shop " + shop +
		". Answer briefly and politely in the customer's language. " +
		"Never invent order facts, prices or promises."
}

func handoffText(question string) string {
	if hasCJK(question) {
		return "抱歉，智能客服暂时无法回答您的问题，已为您转接人工客服，请稍候。"
	}
	return "Sorry, our assistant cannot answer right now. A human agent will get back to you shortly."
}

func hasCJK(s string) bool {
	for _, r := range s {
		if r >= 0x4E00 && r <= 0x9FFF {
			return true
		}
	}
	return false
}
