package ingest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

func (b *testBundle) setEdgeLimits(t *testing.T, shop string, l storage.EdgeLimits) {
	t.Helper()
	// Before the shop's first request: the edge caches shop settings.
	if err := b.db.SetShopEdgeLimits(context.Background(), shop, l); err != nil {
		t.Fatal(err)
	}
}

func (b *testBundle) post(t *testing.T, token, body string) result {
	t.Helper()
	r := b.do(t, "POST", "/v1/messages", token, body)
	if r.status != http.StatusAccepted {
		t.Fatalf("post %s: %d %s", body, r.status, r.raw)
	}
	return r
}

// A customer gets p0 from keywords at most p0_per_user_per_hour times;
// beyond that the message is p1. Other customers, hints with the scope and
// repeats of an accepted message are unaffected, and a batch counts the
// same way.
func TestKeywordP0IsCappedPerUser(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	b.setEdgeLimits(t, "shop1", storage.EdgeLimits{P0PerUserPerHour: 3, ReadPerUserPerMinute: 120, SSEStreamsPerUser: 5})

	alice := tok(t, "shop1", b.salt+"alice", token.ScopeUrgent)
	for i := range 3 {
		if r := b.post(t, alice, fmt.Sprintf(`{"text":"我要退款 %d"}`, i)); r.body["priority"] != "p0" {
			t.Fatalf("keyword message %d: %s, want p0", i, r.raw)
		}
	}
	if r := b.post(t, alice, `{"text":"我要退款，第四次"}`); r.body["priority"] != "p1" {
		t.Fatalf("the 4th keyword p0 in the hour: %s, want p1", r.raw)
	}
	if got := testutil.ToFloat64(b.edge.metrics.p0Capped); got != 1 {
		t.Errorf("peakdesk_ingest_p0_capped_total = %v, want 1", got)
	}
	// A hint with the priority:urgent scope is the scope's, not capped.
	if r := b.post(t, alice, `{"text":"我要退款","priority":"p0"}`); r.body["priority"] != "p0" {
		t.Errorf("p0 hint with the scope after the cap: %s, want p0", r.raw)
	}
	// Another customer of the shop still gets p0.
	if r := b.post(t, tok(t, "shop1", b.salt+"bob"), `{"text":"我要退款"}`); r.body["priority"] != "p0" {
		t.Errorf("another user: %s, want p0", r.raw)
	}

	// Only accepted messages count: repeats of one idempotency key do not
	// use up the customer's p0.
	carol := tok(t, "shop1", b.salt+"carol")
	first := b.post(t, carol, `{"text":"我要退款 1","client_msg_id":"c-1"}`)
	for range 2 {
		if again := b.post(t, carol, `{"text":"我要退款 1","client_msg_id":"c-1"}`); again.body["message_id"] != first.body["message_id"] {
			t.Fatalf("repeat: %s, want message %v", again.raw, first.body["message_id"])
		}
	}
	for i := 2; i <= 3; i++ {
		if r := b.post(t, carol, fmt.Sprintf(`{"text":"我要退款 %d"}`, i)); r.body["priority"] != "p0" {
			t.Errorf("carol's message %d after repeats: %s, want p0", i, r.raw)
		}
	}
	if r := b.post(t, carol, `{"text":"我要退款 4"}`); r.body["priority"] != "p1" {
		t.Errorf("carol's 4th: %s, want p1", r.raw)
	}

	// A gateway's batch: the same cap per named user, counted atomically
	// while the batch's messages go concurrently.
	var msgs []string
	for i := range 6 {
		msgs = append(msgs, fmt.Sprintf(`{"user_id":%q,"text":"refund please %d"}`, b.salt+"dave", i))
	}
	res := batchResults(t, b.do(t, "POST", "/v1/messages:batch", tok(t, "shop1", "gateway", token.ScopeService),
		`{"messages":[`+strings.Join(msgs, ",")+`]}`))
	count := map[any]int{}
	for _, r := range res {
		count[r["priority"]]++
	}
	if count["p0"] != 3 || count["p1"] != 3 {
		t.Errorf("batch of 6 keyword-p0 messages of one user: %v, want 3 p0 and 3 p1", count)
	}
}

// The cap holds on local counts while Redis is unreachable, as the other
// limits do.
func TestKeywordP0CapWithRedisDown(t *testing.T) {
	t.Parallel()
	down, err := storage.OpenRedis("redis://127.0.0.1:1/0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { down.Close() })
	b := setup(t, queue.Topology{}, func(c *Config) { c.Redis = down })
	b.setEdgeLimits(t, "shop1", storage.EdgeLimits{P0PerUserPerHour: 2, ReadPerUserPerMinute: 120, SSEStreamsPerUser: 5})
	u := tok(t, "shop1", b.salt+"u1")
	var got []any
	for i := range 3 {
		got = append(got, b.post(t, u, fmt.Sprintf(`{"text":"我要退款 %d"}`, i)).body["priority"])
	}
	if fmt.Sprint(got) != "[p0 p0 p1]" {
		t.Errorf("priorities with Redis down: %v, want [p0 p0 p1]", got)
	}
	if testutil.ToFloat64(b.edge.metrics.rateDegraded) != 1 {
		t.Error("the edge does not report local limits")
	}
}

// A p1 hint needs the priority:urgent scope like a p0 hint; p2 needs none.
func TestPriorityHintsNeedTheUrgentScope(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	u := tok(t, "shop1", b.salt+"u1")
	for _, hint := range []string{"p0", "p1"} {
		r := b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":"有什么优惠","priority":%q}`, hint))
		e, _ := r.body["error"].(map[string]any)
		if r.status != http.StatusForbidden || errCode(r) != peakdesk.EPermissionDenied || e["field"] != "priority" {
			t.Errorf("%s hint without the scope: %d %s, want 403 permission_denied on priority", hint, r.status, r.raw)
		}
	}
	if r := b.post(t, u, `{"text":"有什么优惠","priority":"p2"}`); r.body["priority"] != "p2" {
		t.Errorf("p2 hint: %s", r.raw)
	}
	s, _ := b.js.Stream(context.Background(), queue.StreamIn)
	if info, _ := s.Info(context.Background()); info.State.Msgs != 1 {
		t.Errorf("CHAT_IN holds %d messages, want only the p2 one", info.State.Msgs)
	}
}

// GETs and event stream opens share a per-user read limit; a service token
// is charged per customer whose data it reads.
func TestReadLimitPerUser(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	b.setEdgeLimits(t, "shop1", storage.EdgeLimits{P0PerUserPerHour: 10, ReadPerUserPerMinute: 3, SSEStreamsPerUser: 5})
	alice := tok(t, "shop1", b.salt+"alice")
	posted := b.post(t, alice, `{"text":"hi"}`) // posts have their own limit
	id, conv := posted.body["message_id"].(string), posted.body["conversation_id"].(string)
	for _, path := range []string{"/v1/messages/" + id, "/v1/conversations/" + conv, "/v1/messages/" + id} {
		if r := b.do(t, "GET", path, alice, ""); r.status != http.StatusOK {
			t.Fatalf("GET %s within the limit: %d %s", path, r.status, r.raw)
		}
	}
	for _, path := range []string{"/v1/messages/" + id, "/v1/conversations/" + conv, "/v1/conversations/" + conv + "/events"} {
		r := b.do(t, "GET", path, alice, "")
		if r.status != http.StatusTooManyRequests || errCode(r) != peakdesk.ERateLimited {
			t.Errorf("GET %s over the limit: %d %s, want 429 rate_limited", path, r.status, r.raw)
		}
		if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
			t.Errorf("GET %s: Retry-After %q", path, r.header.Get("Retry-After"))
		}
	}
	if got := testutil.ToFloat64(b.edge.metrics.readRefusals.WithLabelValues("get_message", "read_limit")); got != 1 {
		t.Errorf("read refusals of get_message = %v, want 1", got)
	}

	// Another customer reads on.
	bob := tok(t, "shop1", b.salt+"bob")
	bobConv := b.post(t, bob, `{"text":"hi"}`).body["conversation_id"].(string)
	if r := b.do(t, "GET", "/v1/conversations/"+bobConv, bob, ""); r.status != http.StatusOK {
		t.Errorf("another user: %d %s", r.status, r.raw)
	}
	// The shop's gateway reads for many customers: each read counts for
	// the customer whose conversation it is.
	for range 2 { // store both conversations, as a worker would
		m, _ := b.takeMessage(t, peakdesk.P2)
		b.answer(t, m, "stored")
	}
	gw := tok(t, "shop1", "gateway", token.ScopeService)
	if r := b.do(t, "GET", "/v1/conversations/"+conv, gw, ""); r.status != http.StatusTooManyRequests {
		t.Errorf("gateway reading alice's conversation: %d %s, want 429", r.status, r.raw)
	}
	for range 2 { // bob has read once
		if r := b.do(t, "GET", "/v1/conversations/"+bobConv, gw, ""); r.status != http.StatusOK {
			t.Errorf("gateway reading bob's conversation: %d %s", r.status, r.raw)
		}
	}
	if r := b.do(t, "GET", "/v1/conversations/"+bobConv, gw, ""); r.status != http.StatusTooManyRequests {
		t.Errorf("gateway reading bob's conversation a 4th time: %d %s, want 429", r.status, r.raw)
	}
}

// openEvents opens a conversation's event stream; the caller closes it.
func (b *testBundle) openEvents(t *testing.T, conv, token string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", b.srv.URL+"/v1/conversations/"+conv+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp
}

func (b *testBundle) userStreams(shop, user string) int {
	b.edge.streamsMu.Lock()
	defer b.edge.streamsMu.Unlock()
	return b.edge.userStreams[shop+"\x00"+user]
}

// A customer may hold sse_streams_per_user (default 5) event streams open
// on one edge process; the 6th is refused until one closes.
func TestEventStreamsPerUserCap(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	user := b.salt + "alice"
	alice := tok(t, "shop1", user)
	conv := b.post(t, alice, `{"text":"hi"}`).body["conversation_id"].(string)
	var open []*http.Response
	for i := range 5 {
		resp := b.openEvents(t, conv, alice)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %d", i+1, resp.StatusCode)
		}
		open = append(open, resp)
	}
	sixth := b.openEvents(t, conv, alice)
	if sixth.StatusCode != http.StatusTooManyRequests || sixth.Header.Get("Retry-After") == "" {
		t.Fatalf("6th stream: %d %v, want 429 with Retry-After", sixth.StatusCode, sixth.Header)
	}
	if got := testutil.ToFloat64(b.edge.metrics.readRefusals.WithLabelValues("conversation_events", "user_streams")); got != 1 {
		t.Errorf("user_streams refusals = %v, want 1", got)
	}
	// Another customer is not affected.
	bob := tok(t, "shop1", b.salt+"bob")
	bobConv := b.post(t, bob, `{"text":"hi"}`).body["conversation_id"].(string)
	if resp := b.openEvents(t, bobConv, bob); resp.StatusCode != http.StatusOK {
		t.Errorf("another user's stream: %d", resp.StatusCode)
	}
	// Once one of alice's streams ends, she may open another.
	open[0].Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for b.userStreams("shop1", user) > 4 {
		if time.Now().After(deadline) {
			t.Fatal("the closed stream is still counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if resp := b.openEvents(t, conv, alice); resp.StatusCode != http.StatusOK {
		t.Errorf("a stream after one closed: %d", resp.StatusCode)
	}
}

// The process holds at most MaxStreams event streams of all users.
func TestEventStreamsProcessCap(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) { c.MaxStreams = 2 })
	for i := range 3 {
		u := tok(t, "shop1", fmt.Sprintf("%su%d", b.salt, i))
		conv := b.post(t, u, `{"text":"hi"}`).body["conversation_id"].(string)
		resp := b.openEvents(t, conv, u)
		want := http.StatusOK
		if i == 2 {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want || (want == 429 && resp.Header.Get("Retry-After") == "") {
			t.Errorf("stream %d: %d %v, want %d", i+1, resp.StatusCode, resp.Header, want)
		}
	}
	if got := testutil.ToFloat64(b.edge.metrics.readRefusals.WithLabelValues("conversation_events", "process_streams")); got != 1 {
		t.Errorf("process_streams refusals = %v, want 1", got)
	}
}

// Each shop signs its customers' tokens with its own key; a shop key can
// act only for its shop and never as an operator.
func TestShopKeyTokens(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	ctx := context.Background()
	k1, err := token.ShopSigningKey(ctx, b.db, "shop1")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := token.ShopSigningKey(ctx, b.db, "shop2")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := token.ShopSigningKey(ctx, b.db, "shop1"); err != nil || again.KID != k1.KID {
		t.Fatalf("second ShopSigningKey: %v %v, want the same key %s", again, err, k1.KID)
	}
	mint := func(k *storage.ShopKey, sub string, scopes ...string) string {
		t.Helper()
		s, err := token.SignWithShopKey(k, sub, scopes, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// A shop-1 key with the shop claim of shop 2.
	forged := *k1
	forged.ShopID = "shop2"
	opsTok, err := forgeToken([]byte(k1.Secret), k1.KID, "shop1", "op", []string{token.ScopeOps}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	unknownKID, _ := forgeToken([]byte(k1.Secret), "0123456789abcdef01234567", "shop1", "alice", nil, time.Hour)
	badKID, _ := forgeToken([]byte(k1.Secret), "../../etc", "shop1", "alice", nil, time.Hour)
	cases := []struct {
		name   string
		token  string
		status int
	}{
		{"shop 1's key for shop 1", mint(k1, b.salt+"alice"), http.StatusAccepted},
		{"shop 2's key for shop 2", mint(k2, b.salt+"alice"), http.StatusAccepted},
		{"platform key, no kid", tok(t, "shop1", b.salt+"alice"), http.StatusAccepted},
		{"shop 1's key claiming shop 2", mint(&forged, b.salt+"alice"), http.StatusUnauthorized},
		{"shop key with an operator scope", opsTok, http.StatusUnauthorized},
		{"unknown kid", unknownKID, http.StatusUnauthorized},
		{"malformed kid", badKID, http.StatusUnauthorized},
	}
	for _, tc := range cases {
		r := b.do(t, "POST", "/v1/messages", tc.token, `{"text":"hi"}`)
		if r.status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, r.status, r.raw, tc.status)
		}
	}
	if _, err := token.SignWithShopKey(k1, "op", []string{token.ScopeOpsWrite}, time.Hour); err == nil {
		t.Error("NewShopToken minted an operator token")
	}
	// The authenticator the operator API shares refuses the shop key's
	// operator token too, and takes a platform one.
	for _, tc := range []struct {
		token string
		code  string
	}{{opsTok, peakdesk.EUnauthenticated}, {tok(t, "shop1", "op", token.ScopeOps), ""}} {
		req := httptest.NewRequest("GET", "/v1/ops/dlq", nil)
		req.Header.Set("Authorization", "Bearer "+tc.token)
		if _, err := b.edge.auth.Authenticate(req); peakdesk.ErrorCode(err) != tc.code {
			t.Errorf("operator token: %v, want code %q", err, tc.code)
		}
	}
}

// Ids and tokens issued under the previous platform key stay valid after a
// rotation while the previous key is listed.
func TestIDsSurvivePlatformKeyRotation(t *testing.T) {
	t.Parallel()
	previous := []byte("ingest-test-previous-secret-0123456789abcdef")
	b := setup(t, queue.Topology{}, func(c *Config) { c.PreviousSecrets = [][]byte{previous} })
	user := b.salt + "alice"
	conv := newIDSigner(previous).New("conv", "shop1", user, "")
	oldTok, err := token.Sign(previous, "shop1", user, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := b.do(t, "POST", "/v1/messages", oldTok, fmt.Sprintf(`{"text":"hi","conversation_id":%q}`, conv))
	if r.status != http.StatusAccepted || r.body["conversation_id"] != conv {
		t.Fatalf("post into a conversation id of the previous key: %d %s", r.status, r.raw)
	}
	if g := b.do(t, "GET", "/v1/conversations/"+conv, tok(t, "shop1", user), ""); g.status != http.StatusOK {
		t.Errorf("GET the conversation: %d %s", g.status, g.raw)
	}

	// Without the previous key listed, neither is valid.
	plain := setup(t, queue.Topology{}, nil)
	if r := plain.do(t, "POST", "/v1/messages", tok(t, "shop1", user), fmt.Sprintf(`{"text":"hi","conversation_id":%q}`, conv)); r.status != http.StatusNotFound {
		t.Errorf("conversation id of an unlisted key: %d %s, want 404", r.status, r.raw)
	}
	if r := plain.do(t, "POST", "/v1/messages", oldTok, `{"text":"hi"}`); r.status != http.StatusUnauthorized {
		t.Errorf("token of an unlisted key: %d %s, want 401", r.status, r.raw)
	}
}

// forgeToken signs a token the way a shop's backend (or an attacker holding
// a key) would: any kid, any claims.
func forgeToken(secret []byte, kid, shop, sub string, scopes []string, ttl time.Duration) (string, error) {
	now := time.Now()
	c := token.Claims{Shop: shop, Scope: strings.Join(scopes, " "), RegisteredClaims: jwt.RegisteredClaims{
		Subject: sub, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl))}}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, &c)
	t.Header["kid"] = kid
	return t.SignedString(secret)
}
