package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// replyHub is the one reader of CHAT_EVENTS in an edge process. An ordered
// consumer delivers every new reply event, with its stream sequence, to the
// requests waiting for it: ?wait= requests by message id and event streams
// by conversation. One consumer per process, not one per client, so the
// number of open event streams is bounded by memory, not by JetStream's
// consumer limits.
type replyHub struct {
	mu       sync.Mutex
	waiters  map[string][]chan *peakdesk.Reply // by message id
	nwaiters atomic.Int64
	streams  map[string]map[*eventListener]struct{} // by event subject
	cc       jetstream.ConsumeContext
	partials *nats.Subscription
	desk     *nats.Subscription
}

// hubEvent is one reply event with its CHAT_EVENTS sequence, or a partial
// reply (streamed text so far), or a customer message stored for a human
// agent (desk); the last two have no sequence and are not replayable.
type hubEvent struct {
	seq     uint64
	data    []byte
	partial bool
	desk    bool
}

// eventListener receives the live events of one conversation. If it falls
// too far behind, the hub drops it and closes gone: the client reconnects
// with Last-Event-ID and loses nothing.
type eventListener struct {
	ch   chan hubEvent
	gone chan struct{}
}

const listenerBuffer = 256

func newReplyHub() *replyHub {
	return &replyHub{
		waiters: map[string][]chan *peakdesk.Reply{},
		streams: map[string]map[*eventListener]struct{}{},
	}
}

func (h *replyHub) start(ctx context.Context, js jetstream.JetStream) error {
	cons, err := js.OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"chat.events.>"},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("reply events consumer: %w", err)
	}
	h.cc, err = cons.Consume(h.onEvent)
	if err != nil {
		return fmt.Errorf("reply events consume: %w", err)
	}
	// Partial replies of streaming answers travel on core NATS only.
	h.partials, err = js.Conn().Subscribe("chat.partial.>", h.onPartial)
	if err != nil {
		h.cc.Stop()
		return fmt.Errorf("partial replies: %w", err)
	}
	// So do customer messages announced to human agents.
	h.desk, err = js.Conn().Subscribe("chat.desk.>", h.onDesk)
	if err != nil {
		_ = h.partials.Unsubscribe()
		h.cc.Stop()
		return fmt.Errorf("desk messages: %w", err)
	}
	return nil
}

func (h *replyHub) stop() {
	if h.desk != nil {
		_ = h.desk.Unsubscribe()
	}
	if h.partials != nil {
		_ = h.partials.Unsubscribe()
	}
	if h.cc != nil {
		h.cc.Stop()
		<-h.cc.Closed()
	}
}

// onPartial hands a partial reply to the conversation's open streams. A
// listener that is behind skips it: the final reply event follows anyway.
func (h *replyHub) onPartial(msg *nats.Msg) {
	h.live("chat.events."+strings.TrimPrefix(msg.Subject, "chat.partial."), hubEvent{data: msg.Data, partial: true})
}

// onDesk hands a customer message stored for a human agent to the
// conversation's open streams (the agents' among them show it).
func (h *replyHub) onDesk(msg *nats.Msg) {
	h.live("chat.events."+strings.TrimPrefix(msg.Subject, "chat.desk."), hubEvent{data: msg.Data, desk: true})
}

// live hands ev, which has no sequence, to the listeners of subject; a
// listener that is behind skips it.
func (h *replyHub) live(subject string, ev hubEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for l := range h.streams[subject] {
		select {
		case l.ch <- ev:
		default:
		}
	}
}

// wait registers interest in the reply to message id. cancel must be called
// when the caller stops waiting.
func (h *replyHub) wait(id string) (<-chan *peakdesk.Reply, func()) {
	ch := make(chan *peakdesk.Reply, 1)
	h.mu.Lock()
	h.waiters[id] = append(h.waiters[id], ch)
	h.mu.Unlock()
	h.nwaiters.Add(1)
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		list := h.waiters[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				h.nwaiters.Add(-1)
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

// listen registers a listener for the events on subject; unlisten must be
// called when the stream ends.
func (h *replyHub) listen(subject string) *eventListener {
	l := &eventListener{ch: make(chan hubEvent, listenerBuffer), gone: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.streams[subject] == nil {
		h.streams[subject] = map[*eventListener]struct{}{}
	}
	h.streams[subject][l] = struct{}{}
	return l
}

func (h *replyHub) unlisten(subject string, l *eventListener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(subject, l)
}

func (h *replyHub) dropLocked(subject string, l *eventListener) {
	set := h.streams[subject]
	if _, ok := set[l]; !ok {
		return
	}
	delete(set, l)
	if len(set) == 0 {
		delete(h.streams, subject)
	}
	close(l.gone)
}

func (h *replyHub) onEvent(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	ev := hubEvent{seq: meta.Sequence.Stream, data: msg.Data()}
	subject := msg.Subject()

	h.mu.Lock()
	defer h.mu.Unlock()
	for l := range h.streams[subject] {
		select {
		case l.ch <- ev:
		default:
			h.dropLocked(subject, l)
		}
	}
	if h.nwaiters.Load() == 0 {
		return
	}
	var r peakdesk.Reply
	if json.Unmarshal(ev.data, &r) != nil {
		return
	}
	for _, id := range r.MessageIDs {
		for _, ch := range h.waiters[id] {
			select {
			case ch <- &r:
			default:
			}
		}
	}
}
