package ingest

import (
	"cmp"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// sseEvent is one reply event read from CHAT_EVENTS.
type sseEvent struct {
	seq  uint64
	data []byte
}

// conversationEvents streams a conversation's reply events as server-sent
// events. Each event's id is its CHAT_EVENTS sequence, so a client that
// reconnects with Last-Event-ID resumes right after what it saw; any edge
// node can serve any conversation because the events live in JetStream.
func (e *Edge) conversationEvents(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	claims, err := e.auth.Authenticate(r)
	if err != nil {
		return err
	}
	conv := r.PathValue("id")
	if _, err := e.readableConversation(ctx, claims, conv); err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{storage.EventSubject(claims.Shop, conv)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if last := cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("last_event_id")); last != "" {
		seq, err := strconv.ParseUint(last, 10, 64)
		if err != nil {
			return peakdesk.FieldError("Last-Event-ID", "Last-Event-ID must be an event id from this stream")
		}
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("ingest: events: response writer cannot flush")
	}
	cons, err := e.cfg.JS.OrderedConsumer(ctx, storage.StreamEvents, cfg)
	if err != nil {
		return fmt.Errorf("ingest: events: consumer: %w", err)
	}
	events := make(chan sseEvent, 64)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		meta, err := msg.Metadata()
		if err != nil {
			return
		}
		select {
		case events <- sseEvent{seq: meta.Sequence.Stream, data: msg.Data()}:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return fmt.Errorf("ingest: events: consume: %w", err)
	}
	defer cc.Stop()

	e.streams.Add(1)
	defer e.streams.Done()
	e.metrics.sseStreams.Inc()
	defer e.metrics.sseStreams.Dec()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	flusher.Flush()

	heartbeat := time.NewTicker(e.cfg.SSEHeartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case ev := <-events:
			if _, err := fmt.Fprintf(w, "event: reply\nid: %d\ndata: %s\n\n", ev.seq, ev.data); err != nil {
				return nil
			}
			flusher.Flush()
		case <-heartbeat.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
			flusher.Flush()
		case <-ctx.Done():
			return nil
		case <-e.closing:
			return nil
		}
	}
}
