package workers

import (
	"context"
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
// cancelled with ErrTurnLost. The worker's heartbeat does it for all its
// handlers at once: one statement renews every hold.
type keepAlive struct {
	w    *Worker
	mu   sync.Mutex
	msg  jetstream.Msg
	cur  *storage.Hold
	lost context.CancelCauseFunc
}

func (w *Worker) keepAlive(_ context.Context, msg jetstream.Msg) *keepAlive {
	ka := &keepAlive{w: w, msg: msg}
	w.beats.add(ka)
	return ka
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
	ka.w.beats.remove(ka)
}

// heartbeat beats for a worker's keepAlives every third of its AckWait
// while it has any (it needs no starting).
type heartbeat struct {
	w       *Worker
	mu      sync.Mutex
	kas     map[*keepAlive]struct{}
	running bool
	stopped bool
	quit    chan struct{}  // closed by stop
	wg      sync.WaitGroup // the running beat goroutine
}

func (hb *heartbeat) add(ka *keepAlive) {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	if hb.kas == nil {
		hb.kas = map[*keepAlive]struct{}{}
	}
	hb.kas[ka] = struct{}{}
	if !hb.running && !hb.stopped {
		if hb.quit == nil {
			hb.quit = make(chan struct{})
		}
		hb.running = true
		hb.wg.Add(1)
		go hb.run()
	}
}

// stop ends the beats and waits for the running one, if any. The worker
// calls it once its handlers are done.
func (hb *heartbeat) stop() {
	hb.mu.Lock()
	if !hb.stopped {
		hb.stopped = true
		if hb.quit != nil {
			close(hb.quit)
		}
	}
	hb.mu.Unlock()
	hb.wg.Wait()
}

func (hb *heartbeat) remove(ka *keepAlive) {
	hb.mu.Lock()
	delete(hb.kas, ka)
	hb.mu.Unlock()
}

func (hb *heartbeat) run() {
	defer hb.wg.Done()
	t := time.NewTicker(hb.w.ackWait / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-hb.quit:
			hb.mu.Lock()
			hb.running = false
			hb.mu.Unlock()
			return
		}
		hb.mu.Lock()
		if len(hb.kas) == 0 {
			hb.running = false
			hb.mu.Unlock()
			return
		}
		kas := make([]*keepAlive, 0, len(hb.kas))
		for ka := range hb.kas {
			kas = append(kas, ka)
		}
		hb.mu.Unlock()
		hb.beat(kas)
	}
}

// beat renews the holds first: should the worker die, its holds must run
// out no later than its messages' AckWait, so that a redelivery finds the
// conversation free (and answers it) rather than held (and waits for the
// sweeper).
func (hb *heartbeat) beat(kas []*keepAlive) {
	var holds []*storage.Hold
	lostOf := map[*storage.Hold]context.CancelCauseFunc{}
	msgs := make([]jetstream.Msg, 0, len(kas))
	for _, ka := range kas {
		ka.mu.Lock()
		if ka.cur != nil {
			holds = append(holds, ka.cur)
			lostOf[ka.cur] = ka.lost
		}
		if ka.msg != nil {
			msgs = append(msgs, ka.msg)
		}
		ka.mu.Unlock()
	}
	if len(holds) > 0 {
		rctx, cancel := context.WithTimeout(context.Background(), hb.w.ackWait/3)
		lost, err := hb.w.cfg.DB.RenewHolds(rctx, holds, hb.w.ackWait)
		cancel()
		if err != nil {
			hb.w.log.Warn("renewing the conversation holds failed", "holds", len(holds), "err", err)
		}
		for _, h := range lost {
			lostOf[h](storage.ErrTurnLost)
		}
	}
	for _, msg := range msgs {
		hb.w.settle(hb.w.log, msg, inProgress())
	}
}
