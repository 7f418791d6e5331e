package ingest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/sse"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// openSSE opens the event stream at path (with the query) and fails the test
// unless it answers 200. headers are name, value pairs.
func (b *testBundle) openSSE(t *testing.T, path string, headers ...string) (*sse.Reader, *http.Response) {
	t.Helper()
	resp := b.get(t, path, headers...)
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, raw)
	}
	return sse.NewReader(resp.Body), resp
}

// get sends a GET whose body the test reads; it is closed at cleanup.
func (b *testBundle) get(t *testing.T, path string, headers ...string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", b.srv.URL+path, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp
}

// nextReply reads the next reply event, skipping partials, within the
// test's patience (a stuck stream fails the test through its deadline).
func nextReply(t *testing.T, rd *sse.Reader) (id string, r peakdesk.Reply) {
	t.Helper()
	for {
		ev, err := rd.Next()
		if err != nil {
			t.Fatalf("reading events: %v", err)
		}
		if ev.Type != "reply" {
			continue
		}
		if err := json.Unmarshal([]byte(ev.Data), &r); err != nil {
			t.Fatal(err)
		}
		return ev.ID, r
	}
}

// publishReply publishes a reply event as a worker would, without storing
// it (the streams read JetStream only).
func (b *testBundle) publishReply(t *testing.T, shop, user, conv, text string) *peakdesk.Reply {
	t.Helper()
	r := &peakdesk.Reply{ID: fmt.Sprintf("r-%d", time.Now().UnixNano()), ShopID: shop, UserID: user,
		ConversationID: conv, Text: text, Source: peakdesk.SourceLLM}
	if err := queue.PublishReplyEvent(context.Background(), b.js, r); err != nil {
		t.Fatal(err)
	}
	return r
}

func bearerHeader(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

// One stream per customer: GET /v1/events carries the replies of all of
// the customer's conversations, with one Last-Event-ID, and no one else's;
// a reconnect gets only what it missed.
func TestCustomerStreamCarriesEveryConversation(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	alice, bob := b.salt+"alice", b.salt+"bob"
	c1 := b.edge.ids.New("conv", "shop1", alice, "")
	c2 := b.edge.ids.New("conv", "shop1", alice, "")
	rd, resp := b.openSSE(t, "/v1/events", bearerHeader(tok(t, "shop1", alice))...)

	r1 := b.publishReply(t, "shop1", alice, c1, "one")
	b.publishReply(t, "shop1", bob, b.edge.ids.New("conv", "shop1", bob, ""), "bob's")
	b.publishReply(t, "shop2", alice, c1, "another shop's alice")
	r2 := b.publishReply(t, "shop1", alice, c2, "two")
	id1, got1 := nextReply(t, rd)
	id2, got2 := nextReply(t, rd)
	if got1.ID != r1.ID || got2.ID != r2.ID || got1.ConversationID != c1 || got2.ConversationID != c2 {
		t.Fatalf("got %s on %s then %s on %s; want %s on %s then %s on %s",
			got1.ID, got1.ConversationID, got2.ID, got2.ConversationID, r1.ID, c1, r2.ID, c2)
	}
	resp.Body.Close()

	r3 := b.publishReply(t, "shop1", alice, c1, "three, while away")
	rd, _ = b.openSSE(t, "/v1/events", append(bearerHeader(tok(t, "shop1", alice)), "Last-Event-ID", id1)...)
	for _, want := range []*peakdesk.Reply{r2, r3} {
		id, got := nextReply(t, rd)
		if got.ID != want.ID {
			t.Fatalf("resumed after %s with %s (id %s), want %s", id1, got.ID, id, want.ID)
		}
		if want == r2 && id != id2 {
			t.Fatalf("r2 came with id %s, first with %s", id, id2)
		}
	}
}

// Opening a stream costs no Postgres read when the conversation id's HMAC
// proves whose it is (or the owner was looked up once before): with the
// database gone, customers' and a gateway's streams still open and follow
// their replies — including a conversation whose first message is queued.
// A reopen whose Last-Event-ID is the customer's latest reads no JetStream
// either.
func TestStreamOpensReadNoPostgres(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	alice := b.salt + "alice"
	aliceTok := tok(t, "shop1", alice)
	gateway := tok(t, "shop1", "gateway", token.ScopeService)

	// A stored conversation, whose owner a service token (naming nobody)
	// looks up once.
	stored := b.edge.ids.New("conv", "shop1", alice, "")
	hello := b.answer(t, &peakdesk.Message{ID: b.edge.ids.New("msg", "shop1", alice, ""), ShopID: "shop1",
		ConversationID: stored, UserID: alice, Text: "hi", Priority: peakdesk.P2, AcceptedAt: time.Now()}, "hello")
	_, resp := b.openSSE(t, "/v1/conversations/"+stored+"/events", bearerHeader(gateway)...)
	resp.Body.Close()

	b.db.Close() // from here on, any Postgres read fails

	queued := b.edge.ids.New("conv", "shop1", alice, "")
	streams := map[string]*sse.Reader{}
	resps := map[string]*http.Response{}
	for name, open := range map[string][]string{
		"customer stream":        append([]string{"/v1/events"}, bearerHeader(aliceTok)...),
		"conversation by HMAC":   append([]string{"/v1/conversations/" + queued + "/events"}, bearerHeader(aliceTok)...),
		"gateway, queued":        append([]string{"/v1/conversations/" + queued + "/events?user_id=" + url.QueryEscape(alice)}, bearerHeader(gateway)...),
		"gateway, cached owner":  append([]string{"/v1/conversations/" + stored + "/events?last_event_id=1"}, bearerHeader(gateway)...),
		"gateway, customer feed": append([]string{"/v1/events?user_id=" + url.QueryEscape(alice)}, bearerHeader(gateway)...),
	} {
		rd, resp := b.openSSE(t, open[0], open[1:]...)
		streams[name], resps[name] = rd, resp
	}
	r := b.publishReply(t, "shop1", alice, queued, "answer to the queued one")
	for name, rd := range streams {
		if name == "gateway, cached owner" {
			continue // another conversation
		}
		if strings.Contains(name, "customer") {
			// A customer's stream opened without Last-Event-ID replays
			// what CHAT_EVENTS holds of the customer first.
			if _, got := nextReply(t, rd); got.ID != hello.ID {
				t.Fatalf("%s: replayed %s first, want %s", name, got.ID, hello.ID)
			}
		}
		if _, got := nextReply(t, rd); got.ID != r.ID {
			t.Fatalf("%s: got %s, want %s", name, got.ID, r.ID)
		}
	}
	r2 := b.publishReply(t, "shop1", alice, stored, "on the stored one")
	if _, got := nextReply(t, streams["gateway, cached owner"]); got.ID != r2.ID {
		t.Fatalf("stored conversation: got %s, want %s", got.ID, r2.ID)
	}

	// The hub has seen alice's latest event: a reopen from it reads nothing.
	// (Alice holds the 5 streams a customer may: one goes first.)
	resps["customer stream"].Body.Close()
	storagetest.WaitFor(t, "the closed stream to be released", 10*time.Second, func() bool {
		b.edge.streamsMu.Lock()
		defer b.edge.streamsMu.Unlock()
		return b.edge.userStreams[userKey("shop1", alice)] < 5
	})
	latest := lastSeq(t, b, queue.UserEventSubject("shop1", alice))
	opens := func(replay string) float64 {
		return testutil.ToFloat64(b.edge.push.metrics.opens.WithLabelValues("customer", "sse", replay))
	}
	skipped, read := opens("skipped"), opens("read")
	rd, _ := b.openSSE(t, "/v1/events", append(bearerHeader(aliceTok), "Last-Event-ID", strconv.FormatUint(latest, 10))...)
	// The open is counted once its replay is decided, after the response
	// headers went out.
	storagetest.WaitFor(t, "the reopen to be counted", 10*time.Second, func() bool {
		return opens("skipped")+opens("read") > skipped+read
	})
	if opens("skipped") != skipped+1 || opens("read") != read {
		t.Fatalf("a reopen from the latest event read JetStream (skipped opens %v → %v, read %v → %v)",
			skipped, opens("skipped"), read, opens("read"))
	}
	r3 := b.publishReply(t, "shop1", alice, queued, "live after the reopen")
	if _, got := nextReply(t, rd); got.ID != r3.ID {
		t.Fatalf("after the reopen: got %s, want %s", got.ID, r3.ID)
	}
}

func lastSeq(t *testing.T, b *testBundle, subject string) uint64 {
	t.Helper()
	s, err := b.js.Stream(context.Background(), queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		t.Fatal(err)
	}
	// The hub may not have read it yet: wait until it has.
	storagetest.WaitFor(t, "the hub to see the event", 10*time.Second, func() bool {
		b.edge.hub.mu.Lock()
		defer b.edge.hub.mu.Unlock()
		return b.edge.hub.seen.curLast >= msg.Sequence
	})
	return msg.Sequence
}

// A gateway (service token) follows any conversation of its shop by naming
// the customer — also while the first message is queued, which no table
// holds yet; naming the wrong customer, or none, finds nothing.
func TestServiceTokenFollowsQueuedConversation(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	gateway := tok(t, "shop1", "gateway", token.ScopeService)
	alice := b.salt + "alice"
	res := b.do(t, "POST", "/v1/messages", gateway, fmt.Sprintf(`{"text":"我的快递到哪了","user_id":%q}`, alice))
	if res.status != http.StatusAccepted {
		t.Fatalf("post: %d %s", res.status, res.raw)
	}
	conv := res.body["conversation_id"].(string)
	path := "/v1/conversations/" + conv + "/events"

	for _, tc := range []struct {
		query string
		want  int
	}{
		{"", http.StatusNotFound},
		{"?user_id=" + url.QueryEscape(b.salt+"mallory"), http.StatusNotFound},
	} {
		resp := b.get(t, path+tc.query, bearerHeader(gateway)...)
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s%s: %d, want %d", path, tc.query, resp.StatusCode, tc.want)
		}
	}
	// A customer naming another customer is refused outright.
	if resp := b.get(t, path+"?user_id=x", bearerHeader(tok(t, "shop1", alice))...); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a customer naming someone else: %d, want 403", resp.StatusCode)
	}
	rd, _ := b.openSSE(t, path+"?user_id="+url.QueryEscape(alice), bearerHeader(gateway)...)
	m, _ := b.takeMessage(t, peakdesk.P1)
	r := b.answer(t, m, "在路上")
	if _, got := nextReply(t, rd); got.ID != r.ID {
		t.Fatalf("got %s, want %s", got.ID, r.ID)
	}
	// A gateway's customer stream needs the customer named.
	if resp := b.get(t, "/v1/events", bearerHeader(gateway)...); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a gateway's customer stream without user_id: %d, want 400", resp.StatusCode)
	}
}

// Opens beyond the gate's slots wait their turn instead of failing; one
// that waits too long, or finds the queue full, is answered 503 with a
// Retry-After.
func TestOpenGateQueuesThenRefuses(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	g := newOpenGate(1, 1, time.Hour, b.edge.push.metrics)
	ctx := context.Background()
	leave, err := g.enter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The second waits in the queue until the first leaves.
	got := make(chan error, 1)
	go func() {
		l, err := g.enter(ctx)
		if err == nil {
			l()
		}
		got <- err
	}()
	storagetest.WaitFor(t, "the second open to queue", 10*time.Second, func() bool { return g.waiting.Load() == 1 })
	// The queue (of one) is full: a third is refused at once.
	if _, err := g.enter(ctx); peakdesk.ErrorCode(err) != peakdesk.EOverloaded || retryAfter(err) <= 0 {
		t.Fatalf("third open: %v, want overloaded with a Retry-After", err)
	}
	leave()
	if err := <-got; err != nil {
		t.Fatalf("the queued open: %v", err)
	}
	// One that waits longer than the gate allows is refused.
	short := newOpenGate(1, 10, time.Millisecond, b.edge.push.metrics)
	hold, _ := short.enter(ctx)
	defer hold()
	if _, err := short.enter(ctx); peakdesk.ErrorCode(err) != peakdesk.EOverloaded {
		t.Fatalf("an open that waited too long: %v, want overloaded", err)
	}
}

func retryAfter(err error) time.Duration {
	if e, ok := err.(*peakdesk.Error); ok {
		return e.RetryAfter
	}
	return 0
}

// A storm of opens through one slot: every stream opens (they queue), each
// gets its reply once.
func TestReconnectStormQueues(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) { c.StreamOpens = 1 })
	const n = 40
	type opened struct {
		rd   *sse.Reader
		user string
		err  error
	}
	results := make(chan opened, n)
	for i := range n {
		go func() {
			user := fmt.Sprintf("%sstorm%d", b.salt, i)
			req, _ := http.NewRequest("GET", b.srv.URL+"/v1/events", nil)
			req.Header.Set("Authorization", "Bearer "+tok(t, "shop1", user))
			resp, err := b.srv.Client().Do(req)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			if err != nil {
				results <- opened{err: err}
				return
			}
			t.Cleanup(func() { resp.Body.Close() })
			results <- opened{rd: sse.NewReader(resp.Body), user: user}
		}()
	}
	var all []opened
	for range n {
		o := <-results
		if o.err != nil {
			t.Fatalf("an open of the storm: %v", o.err)
		}
		all = append(all, o)
	}
	for _, o := range all {
		r := b.publishReply(t, "shop1", o.user, b.edge.ids.New("conv", "shop1", o.user, ""), "hi "+o.user)
		if _, got := nextReply(t, o.rd); got.ID != r.ID {
			t.Fatalf("%s got %s, want %s", o.user, got.ID, r.ID)
		}
	}
}

// A client that stops reading is cut once its backlog passes the bound; it
// reconnects with the last id it got and loses nothing, repeats nothing.
func TestSlowClientIsCutAndResumes(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.StreamBacklog = 64 << 10
		c.StreamWriteTimeout = time.Minute
	})
	alice := b.salt + "alice"
	aliceTok := tok(t, "shop1", alice)
	conv := b.edge.ids.New("conv", "shop1", alice, "")

	// A raw connection with a small receive buffer, not read from.
	conn, err := net.Dial("tcp", b.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", aliceTok)
	storagetest.WaitFor(t, "the stream to open", 10*time.Second, func() bool { return b.userStreams("shop1", alice) == 1 })

	big := strings.Repeat("很长的回答。", 2000) // ~36 KB
	want := map[string]bool{}
	cut := func() bool { return testutil.ToFloat64(b.edge.push.metrics.closed.WithLabelValues("slow")) >= 1 }
	for i := 0; !cut(); i++ {
		if i == 2000 {
			t.Fatal("the stream was never cut")
		}
		want[b.publishReply(t, "shop1", alice, conv, big).ID] = true
	}
	for range 3 { // published after the cut
		want[b.publishReply(t, "shop1", alice, conv, big).ID] = true
	}

	// What the cut stream delivered, up to its end.
	got := map[string]int{}
	rd := bufio.NewReader(conn)
	if _, err := http.ReadResponse(rd, nil); err != nil {
		t.Fatal(err)
	}
	events := sse.NewReader(rd)
	for {
		ev, err := events.Next()
		if err != nil {
			break
		}
		var r peakdesk.Reply
		if ev.Type == "reply" && json.Unmarshal([]byte(ev.Data), &r) == nil {
			got[r.ID]++
		}
	}
	last := events.LastEventID()
	if len(got) == len(want) {
		t.Fatalf("the cut stream delivered all %d events", len(got))
	}
	// Nothing of the cut stream stays behind.
	storagetest.WaitFor(t, "the cut stream to be gone", 10*time.Second, func() bool {
		return b.edge.push.watcher.watching() == 0 && b.userStreams("shop1", alice) == 0
	})
	resumed, _ := b.openSSE(t, "/v1/events", append(bearerHeader(aliceTok), "Last-Event-ID", last)...)
	for len(got) < len(want) {
		_, r := nextReply(t, resumed)
		got[r.ID]++
	}
	for id := range want {
		if got[id] != 1 {
			t.Errorf("reply %s delivered %d times", id, got[id])
		}
	}
}

// The same streams over WebSocket: same auth (a bearer header or a stream
// token), one JSON message per event, resuming from ?last_event_id=.
func TestWebSocketStream(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	alice := b.salt + "alice"
	aliceTok := tok(t, "shop1", alice)
	conv := b.edge.ids.New("conv", "shop1", alice, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	wsURL := "ws" + strings.TrimPrefix(b.srv.URL, "http")

	type wsEvent struct {
		Event string          `json:"event"`
		ID    string          `json:"id"`
		Data  json.RawMessage `json:"data"`
	}
	read := func(c *websocket.Conn) wsEvent {
		t.Helper()
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ev wsEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		return ev
	}
	c, _, err := websocket.Dial(ctx, wsURL+"/v1/conversations/"+conv+"/events",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + aliceTok}}})
	if err != nil {
		t.Fatal(err)
	}
	r1 := b.publishReply(t, "shop1", alice, conv, "one")
	first := read(c)
	var got peakdesk.Reply
	if first.Event != "reply" || json.Unmarshal(first.Data, &got) != nil || got.ID != r1.ID || first.ID == "" {
		t.Fatalf("first message %+v, want reply %s with an id", first, r1.ID)
	}
	// A partial of the next answer (live only: the stream is listening,
	// since the reply came).
	data, _ := json.Marshal(map[string]any{"conversation_id": conv, "text": "tw"})
	if err := b.js.Conn().PublishMsg(queue.PartialMsg("shop1", alice, conv, data)); err != nil {
		t.Fatal(err)
	}
	if p := read(c); p.Event != "partial" || p.ID != "" {
		t.Fatalf("second message %+v, want a partial without an id", p)
	}
	c.CloseNow()

	r2 := b.publishReply(t, "shop1", alice, conv, "two")
	st := b.do(t, "POST", "/v1/stream-tokens", aliceTok, "")
	c, _, err = websocket.Dial(ctx, wsURL+"/v1/events?last_event_id="+first.ID+"&stream_token="+
		url.QueryEscape(st.body["stream_token"].(string)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if ev := read(c); ev.Event != "reply" || json.Unmarshal(ev.Data, &got) != nil || got.ID != r2.ID {
		t.Fatalf("resumed with %+v, want reply %s", ev, r2.ID)
	}
}

// Stream tokens open a customer's streams from a URL for 60 s and nothing
// else; the long-lived token is not accepted in a URL.
func TestStreamTokens(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	now := time.Now()
	b.edge.push.tokens.now = func() time.Time { return now }
	alice := b.salt + "alice"
	aliceTok := tok(t, "shop1", alice)

	res := b.do(t, "POST", "/v1/stream-tokens", aliceTok, "")
	st, _ := res.body["stream_token"].(string)
	if res.status != http.StatusOK || !strings.HasPrefix(st, "st1.") || res.body["expires_in"] != float64(60) {
		t.Fatalf("stream token: %d %s", res.status, res.raw)
	}
	q := "?stream_token=" + url.QueryEscape(st)
	rd, _ := b.openSSE(t, "/v1/events"+q)
	r := b.publishReply(t, "shop1", alice, b.edge.ids.New("conv", "shop1", alice, ""), "hi")
	if _, got := nextReply(t, rd); got.ID != r.ID {
		t.Fatalf("got %s, want %s", got.ID, r.ID)
	}

	for _, tc := range []struct {
		name, method, path, auth string
		want                     int
	}{
		{"as a bearer token", "POST", "/v1/messages", st, http.StatusUnauthorized},
		{"on a message", "GET", "/v1/messages/" + b.edge.ids.New("msg", "shop1", alice, "") + q, "", http.StatusUnauthorized},
		{"the JWT in the URL", "GET", "/v1/events?stream_token=" + url.QueryEscape(aliceTok), "", http.StatusUnauthorized},
		{"tampered", "GET", "/v1/events?stream_token=" + url.QueryEscape(st[:len(st)-2]+"AA"), "", http.StatusUnauthorized},
	} {
		if r := b.do(t, tc.method, tc.path, tc.auth, `{"text":"x"}`); r.status != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, r.status, r.raw, tc.want)
		}
	}
	// A gateway mints one for a customer it names; a customer only for
	// themself.
	gw := b.do(t, "POST", "/v1/stream-tokens", tok(t, "shop1", "gw", token.ScopeService), fmt.Sprintf(`{"user_id":%q}`, alice))
	if gw.status != http.StatusOK {
		t.Fatalf("gateway's stream token: %d %s", gw.status, gw.raw)
	}
	if r := b.do(t, "POST", "/v1/stream-tokens", aliceTok, `{"user_id":"bob"}`); r.status != http.StatusForbidden {
		t.Errorf("a customer's token for bob: %d, want 403", r.status)
	}
	// After 60 s it opens nothing (a reconnect needs a fresh one).
	now = now.Add(61 * time.Second)
	if resp := b.get(t, "/v1/events"+q); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("an expired stream token: %d, want 401", resp.StatusCode)
	}
}

// CORS: a shop's allowed origins get CORS headers, preflights included;
// another origin gets none and cannot act; requests without an Origin (apps,
// gateways) are not affected.
func TestCrossOriginRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	if err := b.db.SetShopAllowedOrigins(context.Background(), "shop1", []string{"https://shop1.example"}); err != nil {
		t.Fatal(err)
	}
	alice := b.salt + "alice"
	shop1, shop2 := tok(t, "shop1", alice), tok(t, "shop2", alice)
	acao := func(r result) string { return r.header.Get("Access-Control-Allow-Origin") }

	ok := b.do(t, "POST", "/v1/messages", shop1, `{"text":"hi"}`, "Origin", "https://shop1.example")
	if ok.status != http.StatusAccepted || acao(ok) != "https://shop1.example" {
		t.Fatalf("allowed origin: %d %v", ok.status, ok.header)
	}
	foreign := b.do(t, "POST", "/v1/messages", shop2, `{"text":"hi"}`, "Origin", "https://shop1.example")
	if foreign.status != http.StatusForbidden || acao(foreign) != "" {
		t.Fatalf("an origin shop2 does not allow: %d %v", foreign.status, foreign.header)
	}
	evil := b.do(t, "POST", "/v1/messages", shop1, `{"text":"hi"}`, "Origin", "https://evil.example")
	if evil.status != http.StatusForbidden || acao(evil) != "" {
		t.Fatalf("a foreign origin: %d %v", evil.status, evil.header)
	}
	if plain := b.do(t, "POST", "/v1/messages", shop2, `{"text":"hi"}`); plain.status != http.StatusAccepted || acao(plain) != "" {
		t.Fatalf("no Origin: %d %v", plain.status, plain.header)
	}
	// A token that does not authenticate, from an allowed origin: the
	// widget can read the 401.
	if r := b.do(t, "POST", "/v1/messages", "nope", `{"text":"hi"}`, "Origin", "https://shop1.example"); r.status != http.StatusUnauthorized || acao(r) == "" {
		t.Fatalf("bad token from an allowed origin: %d %v", r.status, r.header)
	}

	preflight := func(path, origin string) *http.Response {
		req, _ := http.NewRequest("OPTIONS", b.srv.URL+path, nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization,content-type,idempotency-key")
		resp, err := b.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, path := range []string{"/v1/messages", "/v1/stream-tokens", "/v1/events", "/v1/conversations/x/events"} {
		resp := preflight(path, "https://shop1.example")
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "https://shop1.example" ||
			!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Idempotency-Key") {
			t.Errorf("preflight %s: %d %v", path, resp.StatusCode, resp.Header)
		}
	}
	if resp := preflight("/v1/messages", "https://evil.example"); resp.Header.Get("Access-Control-Allow-Origin") != "" ||
		resp.StatusCode == http.StatusNoContent {
		t.Errorf("preflight from a foreign origin: %d %v", resp.StatusCode, resp.Header)
	}

	// An event stream opened with a stream token from an allowed origin
	// carries the header too; from another origin it is refused.
	st := b.do(t, "POST", "/v1/stream-tokens", shop1, "").body["stream_token"].(string)
	_, resp := b.openSSE(t, "/v1/events?stream_token="+url.QueryEscape(st), "Origin", "https://shop1.example")
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://shop1.example" {
		t.Errorf("event stream from an allowed origin: %v", resp.Header)
	}
	if r := b.get(t, "/v1/events?stream_token="+url.QueryEscape(st), "Origin", "https://evil.example"); r.StatusCode != http.StatusForbidden ||
		r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("event stream from a foreign origin: %d %v", r.StatusCode, r.Header)
	}
}

// When the edge stops, each stream gets a reconnect hint with a random
// pause (the EventSource retry field), so its clients come back spread out.
func TestShutdownSpreadsReconnects(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	rd, _ := b.openSSE(t, "/v1/events", bearerHeader(tok(t, "shop1", b.salt+"alice"))...)
	storagetest.WaitFor(t, "the stream to open", 10*time.Second, func() bool { return b.userStreams("shop1", b.salt+"alice") == 1 })
	b.edge.CloseStreams()
	if _, err := rd.Next(); err != io.EOF {
		t.Fatalf("after shutdown: %v, want the end of the stream", err)
	}
	if d := rd.Retry(); d < time.Second || d >= 10*time.Second {
		t.Fatalf("retry %v, want a pause of 1..10 s", d)
	}
}

// Events published on the per-conversation subjects of before (by an edge
// or worker not yet upgraded) still reach conversation streams, live and in
// replay, in order with the new ones.
func TestLegacyEventsStillReachConversationStreams(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	alice := b.salt + "alice"
	aliceTok := tok(t, "shop1", alice)
	conv := b.edge.ids.New("conv", "shop1", alice, "")
	legacy := func(id string) {
		t.Helper()
		msg := nats.NewMsg(queue.LegacyEventSubject("shop1", conv))
		msg.Data, _ = json.Marshal(peakdesk.Reply{ID: id, ConversationID: conv, Text: "old", Source: peakdesk.SourceLLM})
		msg.Header.Set(jetstream.MsgIDHeader, id)
		if _, err := b.js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	legacy("old-1")
	r2 := b.publishReply(t, "shop1", alice, conv, "new")
	legacy("old-3")
	storagetest.WaitFor(t, "the hub to see the old subjects", 10*time.Second, b.edge.hub.legacyActive)

	rd, _ := b.openSSE(t, "/v1/conversations/"+conv+"/events", bearerHeader(aliceTok)...)
	for _, want := range []string{"old-1", r2.ID, "old-3"} {
		if _, got := nextReply(t, rd); got.ID != want {
			t.Fatalf("replayed %s, want %s", got.ID, want)
		}
	}
	legacy("old-4")
	if _, got := nextReply(t, rd); got.ID != "old-4" {
		t.Fatalf("live %s, want old-4", got.ID)
	}
}

// The hub's memory of customers' last events is bounded: past its size the
// oldest generation is forgotten and the floor rises, so a forgotten
// customer is replayed from JetStream, never skipped wrongly.
func TestSeenEventsForgetsSafely(t *testing.T) {
	t.Parallel()
	s := newSeenEvents(2)
	s.floor = 10
	s.note("a", 11)
	s.note("b", 12)
	if !s.covers("a", 11) || s.covers("a", 10) || !s.covers("zed", 12) || s.covers("zed", 9) {
		t.Fatal("covers wrong before any rotation")
	}
	s.note("c", 13) // cur {a,b} becomes prev
	s.note("a", 14)
	s.note("d", 15) // prev {a,b} forgotten: floor 12
	if s.floor != 12 {
		t.Fatalf("floor %d, want 12", s.floor)
	}
	if s.covers("b", 11) {
		t.Fatal("b's last (12) forgotten, yet a stream at 11 would skip replay")
	}
	if !s.covers("c", 13) || s.covers("a", 13) || !s.covers("a", 14) {
		t.Fatal("remembered customers answered wrongly")
	}
}
