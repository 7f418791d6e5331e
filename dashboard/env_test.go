package dashboard_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// testBundle is a console on a fresh database, a real Redis and an
// embedded JetStream, served on a loopback port, with shops demo and other.
type testBundle struct {
	dbURL   string
	db      *storage.DB
	conn    *pgx.Conn // for seeding rows the way the relay or workers would leave them
	rdb     *redis.Client
	js      jetstream.JetStream
	console *dashboard.Console
	url     string
	prefix  string // Redis key prefix of this test
	clock   *storagetest.Clock
}

type bundleOptions struct {
	clock          bool // inject a test clock
	sampleInterval time.Duration
	tracer         pgx.QueryTracer                 // sees every query of the console's pool
	wrap           func(http.Handler) http.Handler // around the console's handler
	dbURL          string                          // an existing database instead of a fresh one
	loginPerEmail  int                             // login limits per minute (0 = the defaults)
	loginPerIP     int
}

func setup(t testing.TB, o bundleOptions) *testBundle {
	t.Helper()
	ctx := context.Background()
	b := &testBundle{dbURL: o.dbURL, prefix: "pdtest:" + randomHex() + ":"}
	if b.dbURL == "" {
		b.dbURL = storagetest.DatabaseURL(t)
	}
	var err error
	if b.db, err = storage.OpenTraced(ctx, b.dbURL, 16, o.tracer); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.db.Close)
	if b.conn, err = pgx.Connect(ctx, b.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.conn.Close(context.Background()) })
	for _, shop := range []string{"demo", "other"} {
		if err := b.db.EnsureShop(ctx, shop, shop); err != nil {
			t.Fatal(err)
		}
	}
	if b.rdb, err = storage.OpenRedis(storagetest.RedisURL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.rdb.Close() })
	ns := storagetest.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if b.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureTopology(ctx, b.js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	cfg := dashboard.Config{DB: b.db, Redis: b.rdb, JS: b.js, Logger: storagetest.Logger(t),
		LoginKeyPrefix: b.prefix + "login:", SnapshotPrefix: b.prefix + "snap:",
		SampleInterval: o.sampleInterval, PollInterval: time.Second,
		LoginPerEmail: o.loginPerEmail, LoginPerIP: o.loginPerIP}
	if o.clock {
		b.clock = storagetest.NewClock()
		cfg.Now = b.clock.Now
	}
	if b.console, err = dashboard.New(cfg); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	b.console.Register(mux)
	var h http.Handler = mux
	if o.wrap != nil {
		h = o.wrap(mux)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	b.url = srv.URL
	if err := b.console.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.console.Stop)
	return b
}

func randomHex() string {
	var x [6]byte
	_, _ = rand.Read(x[:])
	return hex.EncodeToString(x[:])
}

const testPassword = "correct horse battery"

// operator creates an operator with testPassword and returns its e-mail.
func (b *testBundle) operator(t testing.TB, role, shop string) string {
	t.Helper()
	hash, err := dashboard.HashPassword(testPassword)
	if err != nil {
		t.Fatal(err)
	}
	email := role + "-" + randomHex() + "@example.com"
	if err := b.db.CreateOperator(context.Background(), &storage.ConsoleOperator{Email: email, PasswordHash: hash,
		Role: role, ShopID: shop}, "test"); err != nil {
		t.Fatal(err)
	}
	return email
}

// client is a browser-like HTTP client with its own cookies that does not
// follow redirects.
type client struct {
	t    testing.TB
	b    *testBundle
	http *http.Client
}

func (b *testBundle) client(t testing.TB) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, b: b, http: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type page struct {
	status   int
	location string
	header   http.Header
	body     string
}

func (c *client) do(req *http.Request) page {
	c.t.Helper()
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return page{status: resp.StatusCode, location: resp.Header.Get("Location"), header: resp.Header, body: string(body)}
}

func (c *client) get(path string, headers ...string) page {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.b.url+path, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return c.do(req)
}

// post sends a form the way a browser on the console's own pages does.
func (c *client) post(path string, form url.Values, headers ...string) page {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.b.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", c.b.url)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return c.do(req)
}

func (c *client) login(email, password string) page {
	c.t.Helper()
	return c.post("/console/login", url.Values{"email": {email}, "password": {password}})
}

// loggedIn returns a client logged in as a new operator of role and shop.
func (b *testBundle) loggedIn(t testing.TB, role, shop string) (*client, string) {
	t.Helper()
	email := b.operator(t, role, shop)
	c := b.client(t)
	if p := c.login(email, testPassword); p.status != http.StatusSeeOther || p.location != "/console/" {
		t.Fatalf("login: %d %s\n%s", p.status, p.location, p.body)
	}
	return c, email
}

// seedActions inserts n actions of kind for shop with payload text word in
// their reason, then moves them to state with lastError (as the relay would
// have left them), and returns their ids, newest first.
func (b *testBundle) seedActions(t testing.TB, shop string, kind peakdesk.ActionKind, n int, state peakdesk.ActionState, lastError string) []int64 {
	t.Helper()
	ctx := context.Background()
	tag := randomHex()
	actions := make([]peakdesk.Action, n)
	for i := range actions {
		var payload []byte
		switch kind {
		case peakdesk.ActionRefundRequest:
			payload, _ = json.Marshal(outbox.RefundPayload{OrderID: "1234567", UserID: "u7", AmountCents: 100,
				Reason: "damaged parcel " + tag})
		default:
			payload, _ = json.Marshal(outbox.CouponPayload{UserID: "u7", AmountCents: 500, Reason: "late parcel " + tag})
		}
		actions[i] = peakdesk.Action{ShopID: shop, ConversationID: strings.Repeat("c", 32), Kind: kind, Payload: payload,
			IdempotencyKey: fmt.Sprintf("seed-%s-%d", tag, i), MaxAttempts: 3,
			NextAttemptAt: time.Now().Add(time.Hour)} // no relay takes them meanwhile
	}
	if got, err := b.db.EnqueueActions(ctx, actions); err != nil || got != n {
		t.Fatalf("seed: %d, %v", got, err)
	}
	var ids []int64
	rows, err := b.conn.Query(ctx, `UPDATE outbox_actions SET state = $2, last_error = $3,
			last_http_status = substring($3 from 'shop answered ([0-9]{3})')::int, attempts = CASE WHEN $2 = 'dead' THEN 3 ELSE 0 END,
			run_attempts = CASE WHEN $2 = 'dead' THEN 3 ELSE 0 END, completed_at = CASE WHEN $2 = 'dead' THEN now() END
		WHERE idempotency_key LIKE $1 RETURNING id`, "seed-"+tag+"-%", string(state), lastError)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		t.Fatal(err)
	}
	return ids
}

func (b *testBundle) action(t testing.TB, id int64) peakdesk.Action {
	t.Helper()
	a, err := b.db.Action(context.Background(), storage.AllShops, id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// audit returns the audit entries of action name.
func (b *testBundle) audit(t testing.TB, name string) []storage.AuditEntry {
	t.Helper()
	all, err := b.db.AuditLog(context.Background(), storage.AllShops, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []storage.AuditEntry
	for _, e := range all {
		if e.Action == name {
			out = append(out, e)
		}
	}
	return out
}
