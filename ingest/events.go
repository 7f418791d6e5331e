package ingest

import (
	"cmp"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// Event streams. GET /v1/events streams every reply of a customer, across
// all their conversations; GET /v1/conversations/{id}/events those of one
// conversation. Both speak server-sent events (event: reply, id: its
// CHAT_EVENTS sequence; event: partial, the text of an answer so far, live
// only) or, when the request asks to upgrade, WebSocket (one JSON message
// per event). Agents' and gateways' conversation streams also show, live
// only, event: message for each customer message stored while a human
// owns the conversation (takeover). A stream first replays what the
// client missed after its Last-Event-ID, then follows live events from the process's reply hub; any
// edge serves any customer, because the events live in JetStream.
//
// An open is cheap: it waits its turn in the open gate (a reconnect storm
// queues), authenticates (tokens are cached), proves the customer owns the
// conversation from the id's HMAC (or one cached owner lookup), and reads
// JetStream only if the hub cannot vouch that nothing was missed — then
// with direct gets on the customer's subject from the Last-Event-ID on.

// isStreamRoute reports whether route is an event stream's: the routes that
// take a stream token.
func isStreamRoute(route string) bool { return route == "events" || route == "conversation_events" }

func (e *Edge) customerEvents(w http.ResponseWriter, r *http.Request) error {
	return e.serveEvents(w, r, "events", "")
}

func (e *Edge) conversationEvents(w http.ResponseWriter, r *http.Request) error {
	return e.serveEvents(w, r, "conversation_events", r.PathValue("id"))
}

// errStreamGone ends an open whose client left (or whose transport wrote its
// own refusal) once the response had begun: nothing is left to answer.
var errStreamGone = errors.New("event stream gone")

func (e *Edge) serveEvents(w http.ResponseWriter, r *http.Request, route, conv string) error {
	ctx := r.Context()
	leave, err := e.push.gate.enter(ctx)
	if err != nil {
		return err
	}
	leave = sync.OnceFunc(leave)
	defer leave()

	claims, err := e.streamClaims(r, route)
	if err != nil {
		return err
	}
	if err := e.chargeRead(ctx, route, claims, ""); err != nil {
		return err
	}
	user, err := e.streamOwner(ctx, claims, conv, r.URL.Query().Get("user_id"))
	if err != nil {
		return err
	}
	if err := e.chargeRead(ctx, route, claims, user); err != nil {
		return err
	}
	last, err := lastEventID(r)
	if err != nil {
		return err
	}
	// The streams of one customer are capped per process, and so are all
	// of them.
	release, err := e.openStream(route, claims.Shop, user, e.edgeLimits(ctx, claims.Shop).SSEStreamsPerUser)
	if err != nil {
		return err
	}
	s := newPushStream(e.hub, claims.Shop, user, conv, last, e.cfg.StreamBacklog)
	s.forOthers = readsForOthers(claims)
	s.release = release

	transport := "sse"
	var startReader func(*pushStream)
	var wait func(*pushStream)
	if isWebSocket(r) {
		transport = "websocket"
		s.out, startReader, err = e.acceptWebSocket(w, r)
	} else {
		s.out, startReader, wait, err = e.acceptSSE(w, r)
	}
	if err != nil {
		release()
		if errors.Is(err, errStreamGone) {
			return nil
		}
		return err
	}
	// Listen before replaying, so no event falls between the two.
	replay, err := e.hub.register(s)
	if err != nil {
		s.close(closeShutdown)
		return nil
	}
	outcome := "skipped"
	if replay {
		outcome = "read"
		if err := e.replay(ctx, s); errors.Is(err, errStreamGone) {
			s.close(closeClient)
			return nil
		} else if err != nil {
			e.log.WarnContext(ctx, "event replay failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "shop", s.shop,
				"err", err)
			s.close(closeReplay) // the client reconnects with its Last-Event-ID
			return nil
		}
	} else {
		s.finishReplay(0)
	}
	kind := "customer"
	if conv != "" {
		kind = "conversation"
	}
	e.push.metrics.opens.WithLabelValues(kind, transport, outcome).Inc()
	if startReader != nil {
		startReader(s)
	}
	leave()
	if wait != nil {
		wait(s)
	}
	return nil
}

// streamClaims authenticates an event stream: a stream token in the query
// (browsers), else the bearer token.
func (e *Edge) streamClaims(r *http.Request, route string) (*token.Claims, error) {
	var claims *token.Claims
	var err error
	if q := r.URL.Query(); isStreamRoute(route) && q.Has("stream_token") {
		claims, err = e.push.tokens.verify(q.Get("stream_token"))
	} else {
		claims, err = e.auth.Authenticate(r)
	}
	switch {
	case err != nil:
		return nil, err
	case claims.Shop == "*":
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied, "operator tokens cannot open event streams")
	}
	return claims, nil
}

// streamOwner returns the customer whose stream the caller opens: the
// token's subject, or for a service token the customer it names
// (?user_id=). For a conversation's stream the customer must own it: the
// conversation id's HMAC proves that without a read (whether its first
// message is stored or still queued), else one cached owner lookup does.
func (e *Edge) streamOwner(ctx context.Context, claims *token.Claims, conv, named string) (string, error) {
	service := readsForOthers(claims) // a gateway or an agent
	if named != "" && named != claims.Subject && !service {
		return "", &peakdesk.Error{Code: peakdesk.EPermissionDenied, Field: "user_id",
			Message: "user_id may differ from the token subject only with the service or agent scope"}
	}
	user := claims.Subject
	if service {
		user = named
	}
	if len(user) > maxUserIDLen {
		return "", peakdesk.FieldError("user_id", "user_id must be at most %d bytes", maxUserIDLen)
	}
	if conv == "" {
		if user == "" {
			return "", peakdesk.FieldError("user_id", "a service token names the customer whose stream it opens: ?user_id=")
		}
		return user, nil
	}
	notFound := peakdesk.Errorf(peakdesk.ENotFound, "conversation not found")
	if !isHexID(conv) {
		return "", notFound
	}
	if user != "" && e.ids.Valid("conv", claims.Shop, user, conv) {
		return user, nil
	}
	owner, err := e.push.owners.lookup(ctx, claims.Shop, conv)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		if service && user == "" {
			return "", peakdesk.Errorf(peakdesk.ENotFound,
				"conversation not found (name its customer with ?user_id= to follow one whose first message is still queued)")
		}
		return "", notFound
	case err != nil:
		return "", err
	case user != "" && owner != user:
		return "", notFound
	}
	return owner, nil
}

// lastEventID is the last event the client has seen: the Last-Event-ID
// header (an EventSource reconnecting) or ?last_event_id= (a client opening
// anew); 0 for none.
func lastEventID(r *http.Request) (uint64, error) {
	id := cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("last_event_id"))
	if id == "" {
		return 0, nil
	}
	last, err := strconv.ParseUint(id, 10, 64)
	if err != nil || last == math.MaxUint64 {
		return 0, peakdesk.FieldError("Last-Event-ID", "Last-Event-ID must be an event id from this stream")
	}
	return last, nil
}

// replayBatch is how many replayed events go out in one write.
const replayBatch = 32

// replay writes the events stream s missed, in order, then hands it to the
// hub's writers. It reads the customer's subject from the stream's position
// on; a conversation's stream skips the customer's other conversations
// and, while CHAT_EVENTS may hold any, also reads the conversation's
// subject of before.
func (e *Edge) replay(ctx context.Context, s *pushStream) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	last := s.sent
	next := func(after uint64) (*jetstream.RawStreamMsg, error) {
		return queue.NextReplyEvent(ctx, e.events, s.shop, s.user, s.conv, after)
	}
	nextLegacy := func(uint64) (*jetstream.RawStreamMsg, error) { return nil, jetstream.ErrMsgNotFound }
	if s.conv != "" && e.hub.legacyActive() {
		subject := queue.LegacyEventSubject(s.shop, s.conv)
		nextLegacy = func(after uint64) (*jetstream.RawStreamMsg, error) {
			return e.events.GetMsg(ctx, after+1, jetstream.WithGetMsgSubject(subject))
		}
	}
	found := func(m *jetstream.RawStreamMsg, err error) (*jetstream.RawStreamMsg, error) {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		return m, err
	}
	u, err := found(next(last))
	if err != nil {
		return err
	}
	l, err := found(nextLegacy(last))
	if err != nil {
		return err
	}
	batch := make([]hubEvent, 0, replayBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := s.out.write(batch, false); err != nil {
			return errStreamGone
		}
		e.push.metrics.replayed.Add(float64(len(batch)))
		batch = batch[:0]
		return nil
	}
	for u != nil || l != nil {
		m := u
		if u == nil || (l != nil && l.Sequence < u.Sequence) {
			m = l
			if l, err = found(nextLegacy(m.Sequence)); err != nil {
				return err
			}
		} else if u, err = found(next(m.Sequence)); err != nil {
			return err
		}
		batch = append(batch, hubEvent{seq: m.Sequence, data: m.Data, conv: s.conv})
		last = m.Sequence
		if len(batch) == replayBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	s.finishReplay(last)
	return nil
}

// isWebSocket reports whether r asks to upgrade to WebSocket.
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket") &&
		strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade")
}

// acceptSSE starts a server-sent event stream. Over HTTP/1 it takes the
// connection over from the server (hijack), writes the response head and
// returns the reader that notices the client leaving; where that is not
// possible it streams through the ResponseWriter, and wait holds the
// handler until the stream ends.
func (e *Edge) acceptSSE(w http.ResponseWriter, r *http.Request) (out streamOut, startReader, wait func(*pushStream), err error) {
	if r.ProtoMajor == 1 {
		conn, _, err := http.NewResponseController(w).Hijack()
		switch {
		case err == nil:
			_ = conn.SetDeadline(time.Time{}) // the server's read timeout no longer applies
			c := &sseConn{conn: conn, timeout: e.cfg.StreamWriteTimeout, watcher: &e.push.watcher}
			if err := c.writeRaw(sseHead(w.Header())); err != nil {
				_ = conn.Close()
				return nil, nil, nil, errStreamGone
			}
			startReader = func(s *pushStream) {
				// No goroutine per stream: the watcher notices the client
				// leaving.
				if !c.watch(&e.hub.goroutines, func() { s.close(closeClient) }) {
					s.close(closeShutdown) // closed meanwhile, or the edge is stopping
				}
			}
			return c, startReader, nil, nil
		case !errors.Is(err, http.ErrNotSupported):
			return nil, nil, nil, err
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	c := &sseResponse{w: w, rc: http.NewResponseController(w), timeout: e.cfg.StreamWriteTimeout,
		done: make(chan struct{})}
	if err := c.writeRaw([]byte("retry: 2000\n\n")); err != nil {
		return nil, nil, nil, errStreamGone
	}
	wait = func(s *pushStream) {
		select {
		case <-c.done:
		case <-r.Context().Done():
			s.close(closeClient)
		}
	}
	return c, nil, wait, nil
}

// acceptWebSocket upgrades to a WebSocket event stream. The page's origin
// was checked already (crossOrigin, against the shop's allowed origins).
// Its reader handles the client's pings and close, and notices it leaving.
func (e *Edge) acceptWebSocket(w http.ResponseWriter, r *http.Request) (streamOut, func(*pushStream), error) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return nil, nil, errStreamGone // Accept has answered
	}
	c.SetReadLimit(4 << 10)
	startReader := func(s *pushStream) {
		started := e.hub.goroutines.Go(func() {
			for {
				_, rd, err := c.Reader(context.Background())
				if err != nil {
					s.close(closeClient)
					return
				}
				_, _ = io.Copy(io.Discard, rd) // clients have nothing to say; ignore it
			}
		})
		if !started {
			s.close(closeShutdown) // the edge is stopping
		}
	}
	return &wsConn{c: c, timeout: e.cfg.StreamWriteTimeout, hub: e.hub}, startReader, nil
}

// registerPush mounts the event streams, stream tokens and the CORS
// preflights of the chat API's paths.
func (e *Edge) registerPush(mux *http.ServeMux) {
	mux.Handle("GET /v1/events", e.instrument("events", e.customerEvents))
	mux.Handle("GET /v1/conversations/{id}/events", e.instrument("conversation_events", e.conversationEvents))
	mux.Handle("POST /v1/stream-tokens", e.instrument("stream_token", e.postStreamToken))
	for _, p := range browserPaths {
		mux.HandleFunc("OPTIONS "+p, e.preflight)
	}
}

// pushState is the edge's state for event streams and browsers.
type pushState struct {
	metrics *pushMetrics
	gate    *openGate
	owners  *ownerCache
	tokens  streamTokens
	origins *originPolicy
	// watcher notices the clients of taken-over SSE streams leaving.
	watcher connWatcher
}
