package ingest

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/peakdesk/peakdesk"
)

// replyHub hands reply events to requests waiting for them (?wait=). One
// core NATS subscription per process sees every reply event; it decodes
// them only while someone waits.
type replyHub struct {
	mu      sync.Mutex
	waiters map[string][]chan *peakdesk.Reply
	count   atomic.Int64
	sub     *nats.Subscription
}

func newReplyHub() *replyHub {
	return &replyHub{waiters: map[string][]chan *peakdesk.Reply{}}
}

func (h *replyHub) start(nc *nats.Conn) error {
	sub, err := nc.Subscribe("chat.events.>", h.onEvent)
	if err != nil {
		return fmt.Errorf("subscribe reply events: %w", err)
	}
	// A waiter that misses an event still finds the reply in Postgres, so
	// a slow hub may drop events rather than stall the connection.
	if err := sub.SetPendingLimits(1<<16, 64<<20); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribe reply events: %w", err)
	}
	h.sub = sub
	return nil
}

func (h *replyHub) stop() {
	if h.sub != nil {
		_ = h.sub.Unsubscribe()
	}
}

// wait registers interest in the reply to message id. cancel must be called
// when the caller stops waiting.
func (h *replyHub) wait(id string) (<-chan *peakdesk.Reply, func()) {
	ch := make(chan *peakdesk.Reply, 1)
	h.mu.Lock()
	h.waiters[id] = append(h.waiters[id], ch)
	h.mu.Unlock()
	h.count.Add(1)
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		list := h.waiters[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				h.count.Add(-1)
				break
			}
		}
		if len(list) == 0 {
			delete(h.waiters, id)
		} else {
			h.waiters[id] = list
		}
	}
}

func (h *replyHub) onEvent(msg *nats.Msg) {
	if h.count.Load() == 0 {
		return
	}
	var r peakdesk.Reply
	if json.Unmarshal(msg.Data, &r) != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range r.MessageIDs {
		for _, ch := range h.waiters[id] {
			select {
			case ch <- &r:
			default:
			}
		}
	}
}
