package workers

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk/storage"
)

// keepAlive keeps a handler's claims alive while it works: InProgress on the
// queued message every third of the worker's AckWait (the shortest of the
// consumers', so 1 s by default), so a long LLM call is not redelivered
// elsewhere, and the conversation hold renewed as often; if the
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
		t := time.NewTicker(w.ackWait / 3)
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
	// The hold first: should the worker die, its hold must run out no later
	// than the message's AckWait, so that the redelivery finds the
	// conversation free (and answers it) rather than held (and waits for
	// the sweeper).
	if hold != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ka.w.ackWait/3)
		if err := ka.w.cfg.DB.RenewHold(rctx, hold, ka.w.ackWait); errors.Is(err, storage.ErrTurnLost) {
			lost(storage.ErrTurnLost)
		} else if err != nil {
			ka.w.log.Warn("renewing a conversation hold failed", "conversation_id", hold.ConversationID, "err", err)
		}
		cancel()
	}
	if msg != nil {
		ka.w.settle(ka.w.log, msg, inProgress())
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
