package ingest

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// pushStream is one open event stream: every reply of a customer (conv ""),
// or of one conversation. It costs little while idle — no goroutine writes
// to it and no buffer waits for it: the hub appends events to its queue
// and a writer goroutine is started when there is something to write, and
// ends when the queue is empty. A stream whose queue grows past the
// backlog bound (a client that does not read) is cut; the client
// reconnects with its Last-Event-ID and replay gives it what it missed.
type pushStream struct {
	hub        *replyHub
	id         uint64
	key        string // index key in the hub: shop and customer, or shop and conversation
	shop, user string
	conv       string // "" for a customer's stream
	// forOthers marks a stream of an agent or a gateway: it also shows
	// customer messages stored for a human agent (event: message).
	forOthers  bool
	out        streamOut
	maxBacklog int
	// release gives back the stream's place under the stream caps; called
	// once, when the stream closes.
	release func()

	// prev and next link the streams of one key; guarded by hub.mu.
	prev, next *pushStream
	// beatAt is the stream's place in its heartbeat slice's list
	// (hub.beatLists); guarded by hub.mu.
	beatAt int

	mu    sync.Mutex
	queue []hubEvent // events to write, nil when there are none
	// queued is the size of the queued events' data.
	queued int
	// sent is the sequence of the last event written or queued: the
	// client's position. It starts at the Last-Event-ID.
	sent      uint64
	replaying bool // the handler is writing the replay: writers wait
	busy      bool // a writer goroutine (or the replay) owns out
	beat      bool // a keep-alive is due
	active    bool // something was written since the last heartbeat check
	closed    bool
}

// closeReason says why a stream ended (the label of
// peakdesk_ingest_streams_closed_total).
type closeReason string

const (
	closeClient   closeReason = "client"   // the client went away
	closeSlow     closeReason = "slow"     // its backlog passed the bound
	closeWrite    closeReason = "write"    // a write failed or timed out
	closeShutdown closeReason = "shutdown" // the edge is stopping
	closeReplay   closeReason = "replay"   // reading JetStream failed
)

// streamOut is the transport of a stream: server-sent events or WebSocket.
type streamOut interface {
	// write writes events, or a keep-alive when there are none and beat is
	// set, within the write timeout.
	write(evs []hubEvent, beat bool) error
	// close ends the transport; idle reports that no write is in progress,
	// so a parting word (the reconnect hint on shutdown) may go out first.
	close(reason closeReason, idle bool)
}

func newPushStream(h *replyHub, shop, user, conv string, last uint64, maxBacklog int) *pushStream {
	s := &pushStream{hub: h, shop: shop, user: user, conv: conv, sent: last, maxBacklog: maxBacklog,
		replaying: true, busy: true}
	s.key = userKey(shop, user)
	if conv != "" {
		s.key = userKey(shop, conv)
	}
	return s
}

// push queues event ev for the client. The hub calls it with hub.mu held,
// in event order.
func (s *pushStream) push(ev hubEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || (ev.desk && !s.forOthers) {
		return
	}
	if ev.desk {
		// Live only, like partials; nothing supersedes it.
	} else if ev.partial {
		// A newer partial of the same answer supersedes a queued one.
		for i := range s.queue {
			if q := &s.queue[i]; q.partial && q.conv == ev.conv {
				s.queued += len(ev.data) - len(q.data)
				*q = ev
				s.kickLocked()
				return
			}
		}
	} else {
		if ev.seq <= s.sent {
			return // written already (replay overlaps the live events)
		}
		if !s.replaying {
			s.sent = ev.seq
		}
	}
	s.queue = append(s.queue, ev)
	s.queued += len(ev.data)
	if s.queued > s.maxBacklog {
		// The client does not keep up: cut it (close takes hub.mu, held by
		// our caller). Its Last-Event-ID is before every queued event, so
		// it loses nothing.
		s.closed = true
		s.queue, s.queued = nil, 0
		// (Refused only once the edge has stopped every stream.)
		s.hub.goroutines.Go(func() { s.finishClose(closeSlow) })
		return
	}
	s.kickLocked()
}

// kickLocked starts a writer if there is something to write and none runs.
func (s *pushStream) kickLocked() {
	if s.busy || s.closed || (len(s.queue) == 0 && !s.beat) {
		return
	}
	s.busy = s.hub.goroutines.Go(s.drain) // refused: the edge is stopping
}

// drain writes what is queued until the queue is empty, then ends.
func (s *pushStream) drain() {
	for {
		s.mu.Lock()
		if s.closed || (len(s.queue) == 0 && !s.beat) {
			s.busy = false
			s.mu.Unlock()
			return
		}
		evs, beat := s.queue, s.beat
		s.queue, s.queued, s.beat, s.active = nil, 0, false, true
		s.mu.Unlock()
		if err := s.out.write(evs, beat); err != nil {
			s.close(closeWrite)
			return
		}
		now := time.Now()
		for _, ev := range evs {
			if !ev.at.IsZero() {
				s.hub.metrics.toWire.Observe(now.Sub(ev.at).Seconds())
			}
		}
	}
}

// heartbeat asks for a keep-alive if nothing was written since the last
// call. The hub calls it without hub.mu: a delivery does not wait for the
// heartbeat's walk.
func (s *pushStream) heartbeat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active {
		s.active = false
		return
	}
	s.beat = true
	s.kickLocked()
}

// finishReplay hands the stream to the hub's writers once the replay up to
// sequence last is written: live events it covered are dropped, the rest
// go out.
func (s *pushStream) finishReplay(last uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = max(s.sent, last)
	kept := s.queue[:0]
	s.queued = 0
	for _, ev := range s.queue {
		if !ev.liveOnly() && ev.seq <= s.sent {
			continue
		}
		if !ev.liveOnly() {
			s.sent = ev.seq
		}
		kept = append(kept, ev)
		s.queued += len(ev.data)
	}
	if len(kept) == 0 {
		kept = nil
	}
	s.queue = kept
	s.replaying, s.busy = false, false
	s.kickLocked()
}

// close ends the stream; it is idempotent.
func (s *pushStream) close(reason closeReason) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.queue, s.queued = nil, 0
	s.mu.Unlock()
	s.finishClose(reason)
}

func (s *pushStream) finishClose(reason closeReason) {
	s.hub.remove(s)
	s.mu.Lock()
	idle := !s.busy
	s.mu.Unlock()
	if s.out != nil {
		s.out.close(reason, idle)
	}
	s.hub.metrics.closed.WithLabelValues(string(reason)).Inc()
	if s.release != nil {
		s.release()
	}
}

// writeBufs are the buffers writers format events into: taken for one
// write, so an idle stream holds none.
var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getWriteBuf() *[]byte { return writeBufs.Get().(*[]byte) }

func putWriteBuf(b *[]byte) {
	if cap(*b) <= 64<<10 {
		*b = (*b)[:0]
		writeBufs.Put(b)
	}
}

// appendSSE appends the server-sent events of evs, or a keep-alive comment.
func appendSSE(b []byte, evs []hubEvent, beat bool) []byte {
	for _, ev := range evs {
		switch {
		case ev.desk:
			// A customer message for the agent: no id, live only.
			b = append(b, "event: message\ndata: "...)
		case ev.partial:
			// Streamed text so far: no id, so resuming is unaffected.
			b = append(b, "event: partial\ndata: "...)
		default:
			b = append(b, "event: reply\nid: "...)
			b = strconv.AppendUint(b, ev.seq, 10)
			b = append(b, "\ndata: "...)
		}
		b = append(b, ev.data...)
		b = append(b, "\n\n"...)
	}
	if len(evs) == 0 && beat {
		b = append(b, ": keep-alive\n\n"...)
	}
	return b
}

// appendWS appends the WebSocket message of ev:
// {"event":"reply","id":"<seq>","data":<reply>} or
// {"event":"partial","data":<partial>}.
func appendWS(b []byte, ev hubEvent) []byte {
	switch {
	case ev.desk:
		b = append(b, `{"event":"message","data":`...)
	case ev.partial:
		b = append(b, `{"event":"partial","data":`...)
	default:
		b = append(b, `{"event":"reply","id":"`...)
		b = strconv.AppendUint(b, ev.seq, 10)
		b = append(b, `","data":`...)
	}
	b = append(b, ev.data...)
	return append(b, '}')
}

// reconnectHint is the parting word of an event stream when the edge stops:
// reconnect after a random pause of 1 to 10 s (the EventSource retry field),
// so the clients of a restarting edge do not all come back at once.
func reconnectHint() []byte {
	return []byte("retry: " + strconv.Itoa(1000+rand.IntN(9000)) + "\n\n")
}

// sseConn is server-sent events on a connection taken over from the HTTP
// server (hijacked): after the response head, no goroutine or buffer of
// net/http stays behind for it, and none of its own while idle — the
// edge's connWatcher notices the client leaving; writes (events, and
// keep-alives that also find dead peers) borrow a pooled buffer.
type sseConn struct {
	mu      sync.Mutex // one writer at a time
	conn    net.Conn
	timeout time.Duration

	// The watcher notices the client leaving (see watch).
	watcher *connWatcher
	wmu     sync.Mutex
	watchID uint64
	watched bool
	closed  bool
}

// watch has the watcher call gone when the client goes away; false when
// the connection is closed already or cannot be watched.
func (c *sseConn) watch(group *goGroup, gone func()) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return false
	}
	id, err := c.watcher.watch(group, c.conn, gone)
	if err != nil {
		return false
	}
	c.watchID, c.watched = id, true
	return true
}

func (c *sseConn) write(evs []hubEvent, beat bool) error {
	b := getWriteBuf()
	defer putWriteBuf(b)
	*b = appendSSE(*b, evs, beat)
	return c.writeRaw(*b)
}

func (c *sseConn) writeRaw(p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	_, err := c.conn.Write(p)
	return err
}

func (c *sseConn) close(reason closeReason, idle bool) {
	c.wmu.Lock()
	c.closed = true
	if c.watched {
		c.watcher.unwatch(c.conn, c.watchID)
		c.watched = false
	}
	c.wmu.Unlock()
	if reason == closeShutdown && idle && c.mu.TryLock() {
		_ = c.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = c.conn.Write(reconnectHint())
		c.mu.Unlock()
	}
	_ = c.conn.Close()
}

// sseHead is the response head of a hijacked event stream: the headers set
// so far (trace context, CORS) and the stream's own. The body ends when
// the connection does.
func sseHead(h http.Header) []byte {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 200 OK\r\n")
	h = h.Clone()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	h.Set("Connection", "close")
	_ = h.Write(&b)
	b.WriteString("\r\nretry: 2000\n\n")
	return b.Bytes()
}

// sseResponse is server-sent events through the ResponseWriter, for a
// server that cannot hand its connection over (HTTP/2): the handler
// goroutine stays until done is closed.
type sseResponse struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	done    chan struct{}
	once    sync.Once
}

func (c *sseResponse) write(evs []hubEvent, beat bool) error {
	b := getWriteBuf()
	defer putWriteBuf(b)
	*b = appendSSE(*b, evs, beat)
	return c.writeRaw(*b)
}

func (c *sseResponse) writeRaw(p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.rc.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.w.Write(p); err != nil {
		return err
	}
	return c.rc.Flush()
}

func (c *sseResponse) close(reason closeReason, idle bool) {
	if reason == closeShutdown && idle && c.mu.TryLock() {
		_ = c.rc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.w.Write(reconnectHint()); err == nil {
			_ = c.rc.Flush()
		}
		c.mu.Unlock()
	}
	c.once.Do(func() { close(c.done) })
}

// wsCloseReconnect is the close code that tells a WebSocket client it was
// cut for falling behind: reconnect with the last event id.
const wsCloseReconnect websocket.StatusCode = 4000

// wsConn is an event stream over WebSocket. Each event is one text message
// (appendWS); keep-alives are pings.
type wsConn struct {
	c       *websocket.Conn
	timeout time.Duration
	hub     *replyHub
}

func (c *wsConn) write(evs []hubEvent, beat bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if len(evs) == 0 && beat {
		return c.c.Ping(ctx)
	}
	b := getWriteBuf()
	defer putWriteBuf(b)
	for _, ev := range evs {
		*b = appendWS((*b)[:0], ev)
		if err := c.c.Write(ctx, websocket.MessageText, *b); err != nil {
			return err
		}
	}
	return nil
}

func (c *wsConn) close(reason closeReason, _ bool) {
	switch reason {
	case closeShutdown:
		// The close handshake waits for the client: not on the caller.
		if !c.hub.goroutines.Go(func() {
			_ = c.c.Close(websocket.StatusServiceRestart, "server restarting: reconnect with your last event id")
		}) {
			_ = c.c.CloseNow()
		}
	case closeSlow:
		if !c.hub.goroutines.Go(func() {
			_ = c.c.Close(wsCloseReconnect, "too far behind: reconnect with your last event id")
		}) {
			_ = c.c.CloseNow()
		}
	default:
		_ = c.c.CloseNow()
	}
}
