package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// testEnv is a fresh database with shops "demo" and "other", the simulated
// shop API behind a real HTTP server, and a shop client pointed at it.
type testEnv struct {
	dbURL string
	db    *storage.DB
	sim   *shopsim.Sim
	url   string
	shop  *shopapi.Client
	clock *storagetest.Clock

	mu    sync.Mutex
	calls []shopCall
}

// shopCall is a request the simulated shop received.
type shopCall struct {
	Method, Path, Key string
	// Trace is its traceparent header.
	Trace string
}

// traceparent is the form of a W3C traceparent header (version 00).
var traceparent = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)

const testWebhookSecret = "whsec-test"

func setup(t testing.TB, faults shopsim.Faults) *testEnv {
	t.Helper()
	dbURL := storagetest.DatabaseURL(t)
	dropEarly(t, dbURL)
	db, err := storage.Open(context.Background(), dbURL, 32)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	for _, shop := range []string{"demo", "other"} {
		if err := db.EnsureShop(context.Background(), shop, shop); err != nil {
			t.Fatal(err)
		}
	}
	e := &testEnv{dbURL: dbURL, db: db, sim: shopsim.New(faults, []byte(testWebhookSecret)), clock: storagetest.NewClock()}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.calls = append(e.calls, shopCall{Method: r.Method, Path: r.URL.Path, Key: r.Header.Get("Idempotency-Key"),
			Trace: r.Header.Get(peakdesk.TraceHeader)})
		e.mu.Unlock()
		e.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	// Every call to a shop carries a trace, whatever the test is about.
	t.Cleanup(func() {
		for _, c := range e.shopCalls() {
			if !traceparent.MatchString(c.Trace) {
				t.Errorf("%s %s reached the shop with traceparent %q", c.Method, c.Path, c.Trace)
			}
		}
	})
	shop, err := shopapi.New(shopapi.Config{DB: db, DefaultBaseURL: srv.URL, Timeout: 5 * time.Second,
		AllowPrivate: true, // httptest listens on loopback
		SettingsTTL:  time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	e.url, e.shop = srv.URL, shop
	return e
}

// shopCalls returns the requests the simulated shop received, in order.
func (e *testEnv) shopCalls() []shopCall {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.calls)
}

// dropEarly drops the test database itself, before storagetest's cleanup
// does (which then finds nothing to drop), retrying while an autovacuum
// worker is in it: the peakdesk role may not terminate one, so a single
// DROP DATABASE WITH (FORCE) fails now and then after busy tests.
func dropEarly(t testing.TB, dbURL string) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	t.Cleanup(func() { // registered after storagetest's, so it runs first
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, storagetest.AdminURL())
		if err != nil {
			return // storagetest reports it
		}
		defer conn.Close(ctx)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			var pgErr *pgconn.PgError
			if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "42501" || time.Now().After(deadline) {
				return
			}
		}
	})
}

// relayConfig is a relay with the test clock, fast polling and hooks that
// fail the test unless replaced.
func (e *testEnv) relayConfig(t testing.TB) outbox.Config {
	return outbox.Config{
		DB: e.db, Shop: e.shop, Now: e.clock.Now,
		Logger:       storagetest.Logger(t),
		PollInterval: 10 * time.Millisecond,
		Step:         10 * time.Second, FollowUpStep: 5 * time.Second, Jitter: 0.1,
		Lease: time.Minute, AttemptTimeout: 10 * time.Second,
		SucceededCountEvery: time.Nanosecond, // the gauges exact, for the tests
		OnFollowUp: func(context.Context, peakdesk.Action, outbox.FollowUpResult) error {
			t.Error("unexpected follow-up")
			return nil
		},
		OnHandoff: func(context.Context, peakdesk.Action, string, string) error {
			t.Error("unexpected handoff")
			return nil
		},
	}
}

func (e *testEnv) startRelay(t testing.TB, cfg outbox.Config) *outbox.Relay {
	t.Helper()
	r, err := outbox.NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// coupon returns a coupon action for catalogue user u7, due at the test
// clock's now.
func (e *testEnv) coupon(i int) peakdesk.Action {
	return e.action(peakdesk.ActionCouponIssue, fmt.Sprintf("test_cpn_%d", i),
		outbox.CouponPayload{UserID: "u7", AmountCents: 500, Reason: fmt.Sprintf("late parcel %d", i)})
}

// refund returns a refund action of part of catalogue order 1234567.
func (e *testEnv) refund(i int) peakdesk.Action {
	return e.action(peakdesk.ActionRefundRequest, fmt.Sprintf("test_rfd_%d", i),
		outbox.RefundPayload{OrderID: "1234567", UserID: "u7", AmountCents: 100, Reason: "damaged"})
}

func (e *testEnv) action(kind peakdesk.ActionKind, key string, payload any) peakdesk.Action {
	b, _ := json.Marshal(payload)
	return peakdesk.Action{ShopID: "demo", ConversationID: strings.Repeat("c", 32), Kind: kind, Payload: b,
		IdempotencyKey: key, MaxAttempts: outbox.DefaultMaxAttempts, NextAttemptAt: e.clock.Now()}
}

func (e *testEnv) enqueue(t testing.TB, actions ...peakdesk.Action) {
	t.Helper()
	if n, err := e.db.EnqueueActions(context.Background(), actions); err != nil || n != len(actions) {
		t.Fatalf("enqueue: %d new, %v", n, err)
	}
}

// actions returns every action of shop demo, newest first.
func (e *testEnv) actions(t testing.TB) []peakdesk.Action {
	t.Helper()
	var all []peakdesk.Action
	var before int64
	for {
		page, err := e.db.ListActions(context.Background(), storage.AllShops, storage.ActionFilter{}, before, 1000)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if len(page) < 1000 {
			return all
		}
		before = page[len(page)-1].ID
	}
}

func (e *testEnv) all(t testing.TB, ok func(peakdesk.Action) bool) bool {
	t.Helper()
	for _, a := range e.actions(t) {
		if !ok(a) {
			return false
		}
	}
	return true
}

func (e *testEnv) attempts(t testing.TB, id int64) []peakdesk.ActionAttempt {
	t.Helper()
	at, err := e.db.ActionAttempts(context.Background(), "demo", id)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// effectsByKey counts the simulated shop's effects by idempotency key.
func (e *testEnv) effectsByKey() map[string]int {
	m := map[string]int{}
	for _, ef := range e.sim.Effects() {
		m[ef.IdempotencyKey]++
	}
	return m
}

// find returns the action with idempotency key key.
func (e *testEnv) find(t testing.TB, key string) peakdesk.Action {
	t.Helper()
	for _, a := range e.actions(t) {
		if a.IdempotencyKey == key {
			return a
		}
	}
	t.Fatalf("no action %s", key)
	return peakdesk.Action{}
}
