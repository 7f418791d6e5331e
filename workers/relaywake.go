package workers

import (
	"context"
	"time"
)

// Waking the relays. A turn's transaction does not notify the relays
// itself (see storage.SaveTurn: a NOTIFY in every turn made the turns commit
// one at a time); the worker notifies them after commit instead, once for
// all the turns that committed within relayWakeEvery. The relays also poll,
// so a notification lost in a crash only delays them.

// relayWakeEvery is the shortest time between two notifications.
const relayWakeEvery = 25 * time.Millisecond

// wakeRelays asks for a notification soon. It never blocks.
func (w *Worker) wakeRelays() {
	select {
	case w.relayWake <- struct{}{}:
	default: // one is pending already
	}
}

// notifyRelays sends the notifications wakeRelays asks for until stop is
// closed, then sends the one still pending, if any.
func (w *Worker) notifyRelays(stop <-chan struct{}) {
	notify := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := w.cfg.DB.NotifyRelays(ctx); err != nil {
			w.log.Debug("waking the relays failed; they find the actions when they poll", "err", err)
		}
	}
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-w.relayWake:
		case <-stop:
			select {
			case <-w.relayWake:
				notify()
			default:
			}
			return
		}
		notify()
		pause.Reset(relayWakeEvery)
		select {
		case <-pause.C:
		case <-stop:
		}
	}
}
