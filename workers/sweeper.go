package workers

import (
	"context"
	"time"

	"github.com/peakdesk/peakdesk"
)

// The sweeper makes sure no stored message is forgotten. A message that
// waited for its conversation was acked (waiting must not use up delivery
// attempts), so after that only Postgres knows about it; if the worker that
// held the conversation dies, or its turn failed, the conversation ends up
// held by nobody with unanswered messages. Every SweepInterval each worker
// looks for such conversations (stored more than SweepGrace ago, retry time
// come) and answers them in a turn of its own, within its free slots; the
// hold decides which worker gets each. It also publishes the reply events
// of turns no queued message stands behind, if their worker died between
// commit and publish.

// sweep runs until fetchCtx ends; the turns it starts run under workCtx.
func (w *Worker) sweep(fetchCtx, workCtx context.Context) {
	t := time.NewTicker(w.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			w.sweepOnce(fetchCtx, workCtx)
		case <-fetchCtx.Done():
			return
		}
	}
}

func (w *Worker) sweepOnce(ctx, workCtx context.Context) {
	replies, err := w.cfg.DB.PendingEvents(ctx, w.cfg.SweepGrace, 100)
	if err != nil && ctx.Err() == nil {
		w.log.Warn("sweeper: pending events", "err", err)
	}
	for _, r := range replies {
		if err := w.publishEvent(ctx, r); err != nil {
			w.log.Warn("sweeper: publishing a reply event failed", "reply_id", r.ID, "err", err)
			break
		}
		if err := w.cfg.DB.EventPublished(ctx, r.ShopID, r.ID); err != nil {
			break
		}
		w.metrics.swept.WithLabelValues("event").Inc()
	}

	free := w.slots.free()
	if free == 0 {
		return
	}
	refs, err := w.cfg.DB.DueConversations(ctx, w.cfg.SweepGrace, min(free, 16))
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("sweeper: due conversations", "err", err)
		}
		return
	}
	for _, ref := range refs {
		if !w.slots.tryAcquire() {
			return
		}
		hold, err := w.cfg.DB.ClaimConversation(ctx, ref.ShopID, ref.ConversationID, newID(), w.ackWait, w.cfg.MaxBatch)
		if err != nil || hold == nil {
			w.slots.release()
			if err != nil && ctx.Err() == nil {
				w.log.Warn("sweeper: claim conversation", "conversation_id", ref.ConversationID, "err", err)
			}
			continue
		}
		w.metrics.swept.WithLabelValues("turn").Inc()
		// No queued message stands behind the turn: it starts a trace of
		// its own.
		tr := peakdesk.ContinueTrace("")
		log := w.log.With("trace_id", tr.ID, "shop", ref.ShopID, "conversation_id", ref.ConversationID,
			"swept", true)
		w.startWork(func() {
			ctx := peakdesk.WithTrace(workCtx, tr)
			ka := w.keepAlive(ctx, nil)
			defer ka.stop()
			w.runTurns(ctx, log, ka, hold)
		})
	}
}
