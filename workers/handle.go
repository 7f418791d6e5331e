package workers

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// Handling a queued message: claim it (and its conversation) in Postgres,
// answer the conversation's first turn, decide the message's fate, then
// answer the turns that queued up meanwhile in the same slot.

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
	w.startWork(func() { w.process(ctx, msg, after, claimed) })
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

// process handles one queued message in its slot: it continues the trace
// the edge started (the logs' trace_id, the traceparent of the LLM calls),
// lets handle decide the message's fate, settles it, and then answers the
// conversation's further turns, if handle left any.
func (w *Worker) process(ctx context.Context, msg jetstream.Msg, after <-chan struct{}, claimed func()) {
	tr := peakdesk.ContinueTrace(msg.Headers().Get(peakdesk.TraceHeader))
	ctx = peakdesk.WithTrace(ctx, tr)
	log := w.log.With("trace_id", tr.ID)
	ka := w.keepAlive(ctx, msg)
	defer ka.stop()
	v, more := w.handle(ctx, log, ka, msg, after, claimed)
	ka.message(nil) // its fate is decided: no more InProgress
	w.settle(log, msg, v)
	if more != nil {
		w.runTurns(ctx, more.log, ka, more.hold)
	}
}

// moreTurns is what is left of a conversation after the first turn of a
// queued message: the next turn's hold, with the log of the conversation.
type moreTurns struct {
	hold *storage.Hold
	log  *slog.Logger
}

// handle decides the fate of queued message msg:
//
//   - ack once it is stored and answered, its reply event published (a
//     redelivery of an answered message only re-publishes the event), or
//     once it is stored to wait for its conversation's next turn (waiting
//     must not use up delivery attempts; Postgres and the sweeper have it);
//   - nak after a delay to try again: its claim or its turn failed (the
//     linear retry schedule), or its event could not be published;
//   - nak at once when the worker is stopping, for another worker;
//   - term for a message that can never be answered.
//
// The message is settled after the conversation's first turn; the turns
// that queued up meanwhile (returned as more) are answered afterwards in
// the same slot, with no queued message behind them.
func (w *Worker) handle(ctx context.Context, log *slog.Logger, ka *keepAlive, msg jetstream.Msg,
	after <-chan struct{}, claimed func()) (v verdict, more *moreTurns) {
	claimDone := sync.OnceFunc(claimed)
	defer claimDone()
	var m peakdesk.Message
	if err := json.Unmarshal(msg.Data(), &m); err != nil || m.ID == "" || m.ShopID == "" || m.ConversationID == "" {
		log.Error("undecodable message terminated", "subject", msg.Subject(), "err", err)
		return term("undecodable message"), nil
	}
	log = log.With("shop", m.ShopID, "conversation_id", m.ConversationID, "message_id", m.ID)
	meta, err := msg.Metadata()
	if err != nil {
		log.Error("message without metadata", "err", err)
		return nak(0), nil
	}
	if after != nil {
		select {
		case <-after:
		case <-ctx.Done():
		}
	}
	claim, err := w.cfg.DB.ClaimMessage(ctx, &m, newID(), w.ackWait, w.cfg.MaxBatch)
	var announced error
	if err == nil && claim.Human {
		// A human agent owns the conversation: the message is stored for
		// the agent. Tell the agents before the conversation's next
		// message is claimed, so they hear of them in order.
		if announced = w.cfg.DB.AnnounceHumanMessage(ctx, &m); announced == nil {
			// And show it at once to the agents following the
			// conversation's events (best effort: the webhook and the
			// stored message are the durable record).
			st := peakdesk.MessageState{ID: m.ID, ConversationID: m.ConversationID, Priority: m.Priority,
				Status: peakdesk.StatusQueued, Text: m.Text, CreatedAt: m.AcceptedAt}
			if err := queue.PublishDeskMessage(w.cfg.JS.Conn(), m.ShopID, &st); err != nil {
				log.Warn("showing a message to the agents live failed", "err", err)
			}
		}
	}
	claimDone()
	switch {
	case errors.Is(err, storage.ErrForeignConversation):
		log.Error("message names another user's conversation; terminated", "err", err)
		return term("foreign conversation"), nil
	case err != nil && ctx.Err() != nil:
		return nak(0), nil
	case err != nil:
		log.Error("storing the message failed; will retry", "delivery", meta.NumDelivered, "err", err)
		return nak(retryDelay(int(meta.NumDelivered))), nil
	case claim.Reply != nil:
		// A redelivery of an answered message: tell the client again, no
		// second answer.
		w.metrics.redelivered.Inc()
		if err := w.publishEvent(ctx, claim.Reply); err != nil {
			log.Warn("re-publishing a reply event failed; will retry", "err", err)
			return nak(retryDelay(int(meta.NumDelivered))), nil
		}
		return ack(), nil
	case claim.Failed:
		log.Warn("message was dead-lettered before; dropping this delivery")
		return ack(), nil
	case claim.Human:
		// The bot says nothing; the agents were told (or are, when the
		// message comes again).
		switch {
		case announced != nil && ctx.Err() != nil:
			return nak(0), nil
		case announced != nil:
			log.Warn("announcing a message to the agents failed; will retry", "err", announced)
			return nak(retryDelay(int(meta.NumDelivered))), nil
		}
		return ack(), nil
	case claim.Waiting:
		// Another worker holds the conversation: the message is stored and
		// answered in that worker's next turn (or by the sweeper should it
		// die).
		w.metrics.waited.Inc()
		return ack(), nil
	}
	if claim.Hold.NewConversation {
		// Its history is known to be empty: the turn reads it from
		// Redis rather than Postgres.
		w.cfg.Memory.Started(ctx, m.ShopID, m.ConversationID)
	}
	w.gather(ctx, log, claim.Hold)
	end := w.turn(ctx, log, ka, claim.Hold, m.ID)
	if end.next != nil {
		more = &moreTurns{hold: end.next, log: log}
	}
	return end.head, more
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

// turnEnd is how a turn ended.
type turnEnd struct {
	// head is the fate of the queued message behind the turn, if any.
	head verdict
	// next holds the conversation's next turn: the messages that queued up
	// meanwhile; nil when none did, or the turn failed.
	next *storage.Hold
}

// runTurns answers the conversation's turns from hold on, one after another,
// until nothing is left (the hold is given up in the same transaction that
// finds nothing) or a turn fails. No queued message stands behind these
// turns: their messages are stored and were acked (the sweeper's turns, and
// those after a queued message's first).
func (w *Worker) runTurns(ctx context.Context, log *slog.Logger, ka *keepAlive, hold *storage.Hold) {
	for hold != nil {
		if ctx.Err() != nil {
			// Stopping: hand the conversation over at once.
			relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = w.cfg.DB.ReleaseHold(relCtx, hold)
			cancel()
			return
		}
		hold = w.turn(ctx, log, ka, hold, "").next
	}
}

// turn answers hold's messages with one reply, stores it (with what it
// promises, in one transaction that also takes the conversation's next
// turn; the transaction is shared with the other turns ready at the same
// time, see storage.TurnCommitter), records it and publishes its event. headID is the queued message
// that got the hold ("" for none); the turn's end tells its fate.
func (w *Worker) turn(ctx context.Context, log *slog.Logger, ka *keepAlive, hold *storage.Hold, headID string) turnEnd {
	turnCtx := ka.hold(ctx, hold)
	ans, err := w.compose(turnCtx, log, hold)
	if err != nil && errors.Is(context.Cause(turnCtx), storage.ErrTurnLost) {
		err = storage.ErrTurnLost
	}
	var next *storage.Hold
	var reply *peakdesk.Reply
	// A reply no queued message stands behind is published by the sweeper
	// should this worker die before it publishes it.
	eventPending := headID == "" || !hold.Includes(headID)
	if err == nil {
		// From here on the work is done and must be recorded even if we are
		// asked to stop.
		reply = ans.Reply
		saveCtx, cancel := context.WithTimeout(context.WithoutCancel(turnCtx), 10*time.Second)
		next, err = w.commits.SaveTurn(saveCtx, hold, storage.TurnReply{
			Reply: reply, EventPending: eventPending, InTx: ans.inTx(), Handoff: ans.Handoff,
		}, w.ackWait, w.cfg.MaxBatch)
		cancel()
	}
	ka.hold(ctx, nil)
	if err != nil {
		return turnEnd{head: w.turnFailed(ctx, log, hold, err)}
	}
	w.wakeRelays() // for the reply webhook and the actions the turn stored
	w.answered(ctx, hold, reply)
	pubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	err = w.publishEvent(pubCtx, reply)
	cancel()
	if err == nil && eventPending {
		// Noted in the next group's transaction (the sweeper publishes
		// the event again should the note be lost).
		w.commits.EventPublished(reply.ShopID, reply.ID)
	}
	end := turnEnd{head: ack(), next: next}
	if err != nil {
		log.Warn("publishing a reply event failed; it will be re-published", "reply_id", reply.ID, "err", err)
		if !eventPending {
			end.head = nak(time.Second) // the redelivery re-publishes it
		}
	}
	return end
}

// answered records a stored reply in the metrics and the conversation memory.
func (w *Worker) answered(ctx context.Context, hold *storage.Hold, reply *peakdesk.Reply) {
	w.metrics.turnSize.Observe(float64(len(hold.Messages)))
	w.nAnswered.Add(int64(len(hold.Messages)))
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

// turnFailed records what a failed turn means for its messages and returns
// the fate of the queued message behind it, if any.
func (w *Worker) turnFailed(ctx context.Context, log *slog.Logger, hold *storage.Hold, err error) verdict {
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	switch {
	case ctx.Err() != nil:
		// Stopping: release both at once for another worker.
		_ = w.cfg.DB.ReleaseHold(bg, hold)
		return nak(0)
	case errors.Is(err, storage.ErrHumanOwned):
		// A human agent took the conversation while the bot composed its
		// answer: the answer is dropped, never sent, and the turn's
		// messages are the agent's (the handoff gave them over).
		log.Info("a human agent took the conversation; the bot's answer is dropped")
		if err := w.cfg.DB.ReleaseHold(bg, hold); err != nil {
			log.Warn("releasing the conversation failed; the hold expires by itself", "err", err)
		}
		return ack()
	case errors.Is(err, storage.ErrTurnLost):
		// Our hold expired and another worker took the conversation; it
		// answers these messages. A short delay lets the redelivery find
		// them answered.
		log.Warn("conversation hold lost; dropping this turn", "err", err)
		return nak(time.Second)
	}
	log.Error("answer failed; will retry", "attempts", maxAttempts(hold), "err", err)
	delay := retryDelay(maxAttempts(hold))
	if err := w.cfg.DB.FailTurn(bg, hold, delay, err.Error()); err != nil {
		log.Warn("recording the failed turn failed; the hold expires by itself", "err", err)
	}
	return nak(delay)
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

// publishEvent publishes r on its conversation's event subject. The reply id
// is the Nats-Msg-Id, so a re-publish within the window is deduplicated.
func (w *Worker) publishEvent(ctx context.Context, r *peakdesk.Reply) error {
	return queue.PublishReplyEvent(ctx, w.cfg.JS, r)
}
