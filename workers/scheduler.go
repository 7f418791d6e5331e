package workers

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
)

// The scheduler (fetchLoop) decides what starts when a slot frees:
//
//   - p0 first, always;
//   - the slots p0 leaves go to p1 and p2 by weight (stride scheduling) while
//     both have work, so p2 is never starved;
//   - it pulls only as many messages as it can start now (FetchNoWait with
//     the free slot count), so nothing ages in a client buffer against its
//     AckWait;
//   - when every queue is empty it parks one blocking pull of one message
//     per consumer (expiring after IdleWait and renewed), so a new message
//     starts within milliseconds instead of after a poll interval. A parked
//     pull may deliver when no slot is free (more than one came back at
//     once): that message is held, kept alive with InProgress, and starts
//     first when a slot frees — after any p0, and in its class's share.

// heldMsg is a message pulled by a parked pull that found no free slot.
type heldMsg struct {
	msg    jetstream.Msg
	beatAt time.Time
}

// parkResult is what a parked pull brought back.
type parkResult struct {
	class int
	msg   jetstream.Msg // nil when it expired empty
	err   error
}

type scheduler struct {
	w       *Worker
	picker  *picker
	held    [3][]heldMsg
	parked  [3]bool
	results chan parkResult
	// parkAfter delays the next park after a failed pull.
	parkAfter time.Time
	// parkCtx cuts parked pulls short when stopping.
	parkCtx    context.Context
	parkCancel context.CancelFunc
}

func newScheduler(w *Worker) *scheduler {
	s := &scheduler{
		w:       w,
		picker:  newPicker(w.cfg.P1Weight, w.cfg.P2Weight),
		results: make(chan parkResult, len(peakdesk.Priorities)),
	}
	s.parkCtx, s.parkCancel = context.WithCancel(context.Background())
	return s
}

// fetchLoop runs until fetchCtx ends; messages it starts run under workCtx.
func (s *scheduler) fetchLoop(fetchCtx, workCtx context.Context) {
	w := s.w
	defer close(w.fetchDone)
	beat := time.NewTicker(max(w.ackWait/3, 100*time.Millisecond))
	defer beat.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for fetchCtx.Err() == nil {
		s.collect()
		dry := s.fill(workCtx)
		free := w.slots.free()
		if !dry && free > 0 {
			continue // the queues have more and there is room: go again
		}
		if dry && free > s.heldCount() {
			if wait := time.Until(s.parkAfter); wait > 0 {
				retry.Reset(wait) // a pull failed just now: do not spin
			} else {
				s.park()
			}
		}
		s.wait(fetchCtx, beat, retry)
	}
	// Stopping: wait for the parked pulls to expire (cut short after a
	// second: a message the server sends into a cancelled pull is only
	// redelivered after AckWait) and give back what they and the hold
	// brought, for immediate redelivery elsewhere.
	grace := time.AfterFunc(time.Second, s.parkCancel)
	defer grace.Stop()
	for s.parkedCount() > 0 {
		s.take(<-s.results)
	}
	s.parkCancel()
	s.releaseHeld()
}

// releaseHeld gives back the messages held for a slot when stopping: they
// were never started, so another worker may take them at once.
func (s *scheduler) releaseHeld() {
	for i := range s.held {
		for _, h := range s.held[i] {
			s.w.settle(s.w.log, h.msg, nak(0))
		}
		s.held[i] = nil
	}
}

// wait returns when there may be something to start: a slot freed (unless
// the worker is idle with every consumer parked: then only a parked pull
// can bring work), a parked pull came back, or a retry is due.
func (s *scheduler) wait(ctx context.Context, beat *time.Ticker, retry *time.Timer) {
	for {
		idle := s.heldCount() == 0 && s.parkedCount() == len(s.parked)
		select {
		case <-s.w.slots.freed:
			if !idle {
				return
			}
		case r := <-s.results:
			s.take(r)
			return
		case <-beat.C:
			s.beatHeld()
		case <-retry.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// fill starts as many messages as there are free slots: p0 first, then p1
// and p2 by weight, held messages before fetched ones of their class. It
// reports whether every queue came back short: nothing more is waiting.
func (s *scheduler) fill(workCtx context.Context) (dry bool) {
	free := s.w.slots.free()
	if free == 0 {
		return false
	}
	// p0 first.
	n := s.startFrom(workCtx, 0, free)
	p0dry := n < free
	free -= n
	// Then p1 and p2 by weight. A class that comes back short is empty for
	// now: it gives its unused share back and drops out of this round.
	eligible := []bool{true, true}
	for free > 0 && (eligible[0] || eligible[1]) {
		plan := s.picker.plan(free, eligible)
		for i, want := range plan {
			if want == 0 {
				continue
			}
			got := s.startFrom(workCtx, i+1, want)
			free -= got
			if got < want {
				s.picker.unused(i, want-got)
				eligible[i] = false
			}
		}
	}
	return p0dry && !eligible[0] && !eligible[1]
}

// startFrom starts up to n messages of class i (0 = p0): held ones first,
// then fetched without waiting. It returns how many it started.
func (s *scheduler) startFrom(workCtx context.Context, i, n int) int {
	w := s.w
	started := 0
	for started < n && len(s.held[i]) > 0 {
		h := s.held[i][0]
		s.held[i] = s.held[i][1:]
		if !w.slots.tryAcquire() {
			s.held[i] = append([]heldMsg{h}, s.held[i]...)
			return started
		}
		w.start(workCtx, h.msg)
		started++
	}
	if started == n {
		return started
	}
	w.pulls.Add(1)
	batch, err := w.consumers[i].FetchNoWait(n - started)
	if err != nil {
		w.log.Warn("fetch failed", "priority", peakdesk.Priorities[i], "err", err)
		return started
	}
	for msg := range batch.Messages() {
		if !w.slots.tryAcquire() {
			// Cannot happen (only this loop takes slots but the sweeper,
			// which takes fewer than it finds free); hold it rather than
			// lose it.
			s.held[i] = append(s.held[i], heldMsg{msg: msg, beatAt: time.Now()})
			continue
		}
		w.start(workCtx, msg)
		started++
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		w.log.Warn("fetch batch failed", "priority", peakdesk.Priorities[i], "err", err)
	}
	return started
}

// park sends one blocking pull of one message to every consumer without one.
func (s *scheduler) park() {
	w := s.w
	for i, c := range w.consumers {
		if s.parked[i] {
			continue
		}
		s.parked[i] = true
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			r := parkResult{class: i}
			w.pulls.Add(1)
			ctx, cancel := context.WithTimeout(s.parkCtx, w.cfg.IdleWait)
			defer cancel()
			batch, err := c.Fetch(1, jetstream.FetchContext(ctx))
			if err != nil {
				r.err = err
			} else {
				for msg := range batch.Messages() {
					r.msg = msg
				}
				if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) &&
					!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
					r.err = err
				}
			}
			s.results <- r
		}()
	}
}

// take handles what a parked pull brought: start it if a slot is free, else
// hold it.
func (s *scheduler) take(r parkResult) {
	s.parked[r.class] = false
	if r.err != nil && s.parkCtx.Err() == nil {
		s.w.log.Warn("blocking fetch failed", "priority", peakdesk.Priorities[r.class], "err", r.err)
		// Do not spin on a broken connection.
		s.parkAfter = time.Now().Add(250 * time.Millisecond)
	}
	if r.msg != nil {
		s.held[r.class] = append(s.held[r.class], heldMsg{msg: r.msg, beatAt: time.Now()})
	}
}

// collect takes every parked result that is ready, without waiting.
func (s *scheduler) collect() {
	for {
		select {
		case r := <-s.results:
			s.take(r)
		default:
			return
		}
	}
}

// beatHeld keeps held messages from being redelivered while they wait for a
// slot.
func (s *scheduler) beatHeld() {
	now := time.Now()
	for i := range s.held {
		for j := range s.held[i] {
			h := &s.held[i][j]
			if now.Sub(h.beatAt) >= s.w.ackWait/3 {
				s.w.settle(s.w.log, h.msg, inProgress())
				h.beatAt = now
			}
		}
	}
}

func (s *scheduler) heldCount() int {
	return len(s.held[0]) + len(s.held[1]) + len(s.held[2])
}

func (s *scheduler) parkedCount() int {
	n := 0
	for _, p := range s.parked {
		if p {
			n++
		}
	}
	return n
}
