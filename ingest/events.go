package ingest

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// conversationEvents streams a conversation's reply events as server-sent
// events. Each event's id is its CHAT_EVENTS sequence: the stream first
// replays the stored events after Last-Event-ID (or all of them) with direct
// gets, then follows the live ones from the process's reply hub. Any edge
// node can serve any conversation because the events live in JetStream.
// While a worker streams an answer, `event: partial` carries the text so far
// (live only, never replayed); the final `event: reply` supersedes it.
// An agent's (or service's) stream also shows, live only, `event: message`
// for each customer message stored while a human owns the conversation
// (human takeover); the message itself stays in GET /v1/conversations/{id}.
func (e *Edge) conversationEvents(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	claims, err := e.auth.Authenticate(r)
	if err != nil {
		return err
	}
	if err := e.chargeRead(ctx, "conversation_events", claims, ""); err != nil {
		return err
	}
	conv := r.PathValue("id")
	c, err := e.readableConversation(ctx, claims, conv)
	if err != nil {
		return err
	}
	if err := e.chargeRead(ctx, "conversation_events", claims, c.UserID); err != nil {
		return err
	}
	var last uint64 // the last sequence the client has seen
	if id := cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("last_event_id")); id != "" {
		if last, err = strconv.ParseUint(id, 10, 64); err != nil || last == math.MaxUint64 {
			return peakdesk.FieldError("Last-Event-ID", "Last-Event-ID must be an event id from this stream")
		}
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("ingest: events: response writer cannot flush")
	}
	subject := queue.EventSubject(claims.Shop, conv)

	// The streams of one customer are capped per process, and so are all
	// of them.
	closeStream, err := e.openStream(claims.Shop, c.UserID, e.edgeLimits(ctx, claims.Shop).SSEStreamsPerUser)
	if err != nil {
		return err
	}
	defer closeStream()
	// Listen before replaying, so no event falls between the two.
	l := e.hub.listen(subject)
	defer e.hub.unlisten(subject, l)
	e.metrics.sseStreams.Inc()
	defer e.metrics.sseStreams.Dec()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")

	write := func(seq uint64, data []byte) bool {
		_, err := fmt.Fprintf(w, "event: reply\nid: %d\ndata: %s\n\n", seq, data)
		return err == nil
	}
	for {
		msg, err := e.events.GetMsg(ctx, last+1, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			e.log.WarnContext(ctx, "event replay failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
			return nil // the client reconnects with its Last-Event-ID
		}
		if !write(msg.Sequence, msg.Data) {
			return nil
		}
		last = msg.Sequence
	}
	flusher.Flush()

	heartbeat := time.NewTicker(e.cfg.SSEHeartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case ev := <-l.ch:
			if ev.desk {
				// A customer message for the agent: only those who
				// read for others (an agent, the shop's gateway) see it.
				if readsForOthers(claims) {
					if _, err := fmt.Fprintf(w, "event: message\ndata: %s\n\n", ev.data); err != nil {
						return nil
					}
					flusher.Flush()
				}
				continue
			}
			if ev.partial {
				// Streamed text so far; no id, so resuming is unaffected.
				if _, err := fmt.Fprintf(w, "event: partial\ndata: %s\n\n", ev.data); err != nil {
					return nil
				}
				flusher.Flush()
				continue
			}
			if ev.seq <= last {
				continue // already replayed
			}
			if !write(ev.seq, ev.data) {
				return nil
			}
			last = ev.seq
			flusher.Flush()
		case <-heartbeat.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
			flusher.Flush()
		case <-l.gone:
			return nil // fell behind; the client resumes from its Last-Event-ID
		case <-ctx.Done():
			return nil
		case <-e.closing:
			return nil
		}
	}
}
