package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// guardedClient is a shop client as production runs it: https only, public
// addresses only.
func (e *testEnv) guardedClient(t *testing.T) *shopapi.Client {
	t.Helper()
	c, err := shopapi.New(shopapi.Config{DB: e.db, SettingsTTL: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A shop URL aimed at peakdesk's own network is refused before anything is
// sent, with a clear error on the attempt, and the action is dead at once:
// no retry could succeed. Its key is kept (an earlier attempt may have used
// it at the real shop).
func TestRefusedShopURLsKillTheActionAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	port := e.url[strings.LastIndex(e.url, ":"):]
	tests := []struct {
		shop     string
		settings storage.ShopAPISettings
		webhook  bool
		want     string
	}{
		{shop: "loopback", settings: storage.ShopAPISettings{BaseURL: "https://127.0.0.1" + port},
			want: "127.0.0.1 is a loopback address"},
		{shop: "metadata", settings: storage.ShopAPISettings{BaseURL: "https://169.254.169.254/latest"},
			want: "169.254.169.254 is a link-local address (the cloud metadata service)"},
		{shop: "localname", settings: storage.ShopAPISettings{BaseURL: "https://localhost" + port},
			want: "localhost is a loopback name"},
		{shop: "plainhttp", settings: storage.ShopAPISettings{BaseURL: "http://shop.example.com"},
			want: "plain http is not allowed"},
		{shop: "mappedhook", webhook: true,
			settings: storage.ShopAPISettings{WebhookURL: "https://[::ffff:10.0.0.7]/hooks"},
			want:     "::ffff:10.0.0.7 is a private address"},
	}
	var actions []peakdesk.Action
	for _, tc := range tests {
		if err := e.db.EnsureShop(ctx, tc.shop, tc.shop); err != nil {
			t.Fatal(err)
		}
		// Written straight to storage, as settings from before these rules
		// (or typed into SQL) would be: the call is where they are caught.
		tc.settings.ShopID = tc.shop
		if err := e.db.PutShopAPISettings(ctx, tc.settings); err != nil {
			t.Fatal(err)
		}
		a := e.coupon(len(actions))
		if tc.webhook {
			a = e.action(peakdesk.ActionWebhookDeliver, "test_whk_"+tc.shop, map[string]string{"event_id": "e-" + tc.shop})
		}
		a.ShopID, a.IdempotencyKey = tc.shop, a.IdempotencyKey+"_"+tc.shop
		actions = append(actions, a)
	}
	e.enqueue(t, actions...)
	cfg := e.relayConfig(t)
	cfg.Shop = e.guardedClient(t)
	e.startRelay(t, cfg)
	storagetest.WaitFor(t, "every action dead", 10*time.Second, func() bool {
		return e.all(t, func(a peakdesk.Action) bool { return a.State == peakdesk.ActionDead })
	})

	for _, tc := range tests {
		var a peakdesk.Action
		for _, x := range e.actions(t) {
			if x.ShopID == tc.shop {
				a = x
			}
		}
		if a.Attempts != 1 || a.Rejected || a.KeyGeneration != 0 ||
			!strings.HasPrefix(a.LastError, "refused before sending: shop url refused: ") || !strings.Contains(a.LastError, tc.want) {
			t.Errorf("%s: %+v; want dead after one attempt, key kept, last error with %q", tc.shop, a, tc.want)
		}
		at, err := e.db.ActionAttempts(ctx, tc.shop, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(at) != 1 || at[0].Outcome != peakdesk.AttemptRejected || !strings.Contains(at[0].Error, tc.want) {
			t.Errorf("%s: attempts %+v", tc.shop, at)
		}
	}
	if st := e.sim.Stats(); len(st.Requests) != 0 {
		t.Errorf("the shop was reached: %+v", st.Requests)
	}
}

// A redirect is a final failure: it is not followed (here it would have
// issued the coupon at another address), and it is recorded as such.
func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	var hits atomic.Int32
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Redirect(w, r, e.url+r.URL.Path, http.StatusTemporaryRedirect) // 307 keeps the POST
	}))
	t.Cleanup(redirector.Close)
	if err := e.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "demo", BaseURL: redirector.URL}); err != nil {
		t.Fatal(err)
	}
	e.enqueue(t, e.coupon(1))
	e.startRelay(t, e.relayConfig(t)) // private URLs allowed: httptest is on loopback
	var a peakdesk.Action
	storagetest.WaitFor(t, "dead", 10*time.Second, func() bool {
		a = e.actions(t)[0]
		return a.State == peakdesk.ActionDead
	})
	if a.Attempts != 1 || a.LastHTTPStatus != http.StatusTemporaryRedirect || a.Rejected ||
		!strings.Contains(a.LastError, "shop url refused: the shop answered 307 redirecting to") ||
		!strings.Contains(a.LastError, "redirects are not followed") {
		t.Errorf("action %+v", a)
	}
	if hits.Load() != 1 || len(e.sim.Effects()) != 0 || len(e.sim.Stats().Requests) != 0 {
		t.Errorf("redirector hit %d times, shop effects %+v, requests %+v; want one hit and nothing at the target",
			hits.Load(), e.sim.Effects(), e.sim.Stats().Requests)
	}
}

// Settings are checked where they are written, as calls will check them.
func TestPutSettingsRefusesURLsThatCouldNeverBeCalled(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	guarded := e.guardedClient(t)
	tests := []struct {
		client   *shopapi.Client
		settings storage.ShopAPISettings
		field    string // "" = accepted
		want     string
	}{
		{guarded, storage.ShopAPISettings{BaseURL: "https://shop.example.com/api", WebhookURL: "https://shop.example.com/hooks"}, "", ""},
		{guarded, storage.ShopAPISettings{WebhookURL: "http://shop.example.com/hooks"}, "webhook_url", "plain http is not allowed"},
		{guarded, storage.ShopAPISettings{BaseURL: "https://127.0.0.1:8091"}, "base_url", "127.0.0.1 is a loopback address"},
		{guarded, storage.ShopAPISettings{BaseURL: "https://169.254.169.254"}, "base_url", "cloud metadata"},
		{guarded, storage.ShopAPISettings{WebhookURL: "https://localhost/hooks"}, "webhook_url", "localhost is a loopback name"},
		{guarded, storage.ShopAPISettings{BaseURL: "https://user:pw@shop.example.com"}, "base_url", "credentials"},
		{e.shop, storage.ShopAPISettings{BaseURL: "http://127.0.0.1:8091"}, "", ""}, // dev and tests
		{e.shop, storage.ShopAPISettings{WebhookURL: "ftp://shop.example.com"}, "webhook_url", `scheme "ftp"`},
		{e.shop, storage.ShopAPISettings{BaseURL: "shop.example.com"}, "base_url", "not absolute"},
	}
	for i, tc := range tests {
		tc.settings.ShopID = "demo"
		err := tc.client.PutSettings(ctx, tc.settings)
		var pe *peakdesk.Error
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%d: %v, want accepted", i, err)
		case tc.field == "":
		case !errors.As(err, &pe) || pe.Code != peakdesk.EInvalid || pe.Field != tc.field || !strings.Contains(pe.Message, tc.want):
			t.Errorf("%d: %v, want invalid_argument on %s with %q", i, err, tc.field, tc.want)
		}
	}
	// Storage itself refuses what is not a URL at all.
	err := e.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "demo", WebhookURL: "javascript:alert(1)"})
	if peakdesk.ErrorCode(err) != peakdesk.EInvalid {
		t.Errorf("storage: %v, want invalid_argument", err)
	}
}

// fakeShop answers every request with status and body.
func fakeShop(t *testing.T, status int, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A shop's answer is read up to 64 KiB, and what is kept of it for
// operators is capped and storable whatever the shop sent.
func TestShopAnswersAreBoundedAndExcerptsCapped(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()

	big := `{"id":"1234567","user_id":"u7","pad":"` + strings.Repeat("x", 100<<10) + `"}`
	if err := e.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "other", BaseURL: fakeShop(t, 200, big)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.shop.Order(ctx, "other", "1234567", ""); !errors.Is(err, shopapi.ErrUnavailable) ||
		!strings.Contains(err.Error(), "larger than 64 KiB") {
		t.Errorf("oversized order answer: %v", err)
	}

	msg := strings.Repeat("优惠券无效\x00", 2<<10) + "\xff" // ~32 KiB: read whole, kept in part
	rejection, _ := json.Marshal(map[string]any{"error": map[string]string{"code": "validation_failed", "message": msg}})
	if err := e.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "demo",
		BaseURL: fakeShop(t, 422, string(rejection))}); err != nil {
		t.Fatal(err)
	}
	e.enqueue(t, e.coupon(1))
	e.startRelay(t, e.relayConfig(t))
	var a peakdesk.Action
	storagetest.WaitFor(t, "dead", 10*time.Second, func() bool {
		a = e.actions(t)[0]
		return a.State == peakdesk.ActionDead
	})
	at := e.attempts(t, a.ID)
	if len(at) != 1 || at[0].HTTPStatus != 422 {
		t.Fatalf("attempts %+v", at)
	}
	for name, s := range map[string]string{"last_error": a.LastError, "error": at[0].Error, "excerpt": at[0].ResponseExcerpt} {
		if len(s) == 0 || len(s) > 512 || !utf8.ValidString(s) || strings.ContainsRune(s, 0) || !strings.HasSuffix(s, "…") {
			t.Errorf("%s: %d bytes %q; want a cut excerpt of at most 512 valid bytes", name, len(s), s[:min(len(s), 80)])
		}
	}
	if !strings.HasPrefix(at[0].ResponseExcerpt, `{"error":`) {
		t.Errorf("excerpt %q", at[0].ResponseExcerpt[:40])
	}
}

// Every delivery attempt is signed with the time it is sent, so the shop
// can refuse a captured request sent again while peakdesk's own retries go
// through (and are deduplicated by event id, one effect).
func TestWebhookRetriesAreSignedAnew(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	var now atomic.Int64
	now.Store(time.Now().Unix())
	client, err := shopapi.New(shopapi.Config{DB: e.db, AllowPrivate: true,
		Now: func() time.Time { return time.Unix(now.Load(), 0) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.PutSettings(ctx, storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: e.url + "/webhooks/replies", WebhookSecret: testWebhookSecret}); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"event_id":"ev1","type":"reply.created"}`)
	deliver := func() (*shopapi.Response, error) { return client.DeliverWebhook(ctx, "demo", "ev1", "key1", body) }

	if r, err := deliver(); err != nil || !strings.Contains(string(r.Body), `"duplicate":false`) {
		t.Fatalf("first delivery: %v %+v", err, r)
	}
	// The same second gives the same signature: refused as a replay, with
	// a status the relay retries.
	_, err = deliver()
	if se, ok := errors.AsType[*shopapi.Error](err); !ok || se.Status != http.StatusConflict || !se.Transient() ||
		se.Code != shopsim.WebhookReplayed {
		t.Fatalf("same-second repeat: %v", err)
	}
	now.Add(1)
	if r, err := deliver(); err != nil || !strings.Contains(string(r.Body), `"duplicate":true`) {
		t.Fatalf("retry a second later: %v %+v", err, r)
	}
	now.Add(-int64(shopapi.WebhookTolerance/time.Second) - 60)
	_, err = deliver()
	if se, ok := errors.AsType[*shopapi.Error](err); !ok || se.Status != http.StatusBadRequest || se.Transient() ||
		se.Code != shopsim.WebhookStale {
		t.Fatalf("signed by a clock 6 minutes slow: %v", err)
	}
	st := e.sim.Stats()
	if st.WebhooksReceived != 1 || st.WebhookDuplicates != 1 || st.WebhookReplays != 1 || st.WebhookStale != 1 ||
		st.WebhookBadSignatures != 0 {
		t.Errorf("stats %+v", st)
	}
	got := e.sim.Webhooks()
	if len(got) != 4 || got[0].Signature == got[2].Signature {
		t.Fatalf("webhooks %+v", got)
	}
	for _, wh := range got {
		if !wh.SignatureValid || wh.EventID != "ev1" || wh.IdempotencyKey != "key1" {
			t.Errorf("recorded %+v", wh)
		}
	}
}

// A shop gets a webhook secret when it is created; settings put without
// one keep it, and one given replaces it.
func TestEveryShopHasAWebhookSecret(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	s, err := e.db.ShopAPISettings(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	created := s.WebhookSecret
	if len(created) != 64 || strings.Trim(created, "0123456789abcdef") != "" {
		t.Fatalf("secret of a new shop: %q, want 32 random bytes in hex", created)
	}
	if d, _ := e.db.ShopAPISettings(ctx, "demo"); d.WebhookSecret == created {
		t.Fatal("two shops share a secret")
	}
	if err := e.shop.PutSettings(ctx, storage.ShopAPISettings{ShopID: "other", WebhookURL: e.url + "/hooks"}); err != nil {
		t.Fatal(err)
	}
	if s, _ = e.db.ShopAPISettings(ctx, "other"); s.WebhookSecret != created || s.WebhookURL != e.url+"/hooks" {
		t.Fatalf("after a put without a secret: %+v", s)
	}
	if err := e.shop.PutSettings(ctx, storage.ShopAPISettings{ShopID: "other", WebhookSecret: "rotated"}); err != nil {
		t.Fatal(err)
	}
	if s, _ = e.db.ShopAPISettings(ctx, "other"); s.WebhookSecret != "rotated" {
		t.Fatalf("after a put with a secret: %q", s.WebhookSecret)
	}
}
