package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// The token the example mints with a shop key from peakdesk's database is
// accepted by peakdesk's authenticator as that shop's customer.
func TestCustomerTokenIsAcceptedByPeakdesk(t *testing.T) {
	ctx := context.Background()
	db := storagetest.DB(t)
	if err := db.EnsureShop(ctx, "shop1", "shop1"); err != nil {
		t.Fatal(err)
	}
	key, err := token.ShopSigningKey(ctx, db, "shop1")
	if err != nil {
		t.Fatal(err)
	}
	auth, err := token.NewShopAuthenticator(token.Config{Secret: []byte(strings.Repeat("p", 32)), DB: db})
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{Shop: "shop1", KeyID: key.KID, KeySecret: []byte(key.Secret), Now: time.Now}
	tok, err := b.CustomerToken("alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/v1/messages", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	c, err := auth.Authenticate(r)
	if err != nil {
		t.Fatalf("peakdesk refused the example's token: %v", err)
	}
	if c.Shop != "shop1" || c.Subject != "alice" || c.KeyID != key.KID {
		t.Fatalf("claims %+v", c)
	}

	b.KeySecret = []byte("not the key")
	forged, _ := b.CustomerToken("alice", time.Hour)
	r.Header.Set("Authorization", "Bearer "+forged)
	if _, err := auth.Authenticate(r); err == nil {
		t.Fatal("a token under another secret was accepted")
	}
}

// The webhook receiver accepts a delivery signed the way peakdesk signs it,
// applies each event once, and refuses a bad signature, a replayed
// signature and an old one.
func TestWebhookReceiver(t *testing.T) {
	secret := []byte("whsec-test")
	now := time.Date(2026, 11, 11, 0, 5, 0, 0, time.UTC)
	var applied []string
	b := &Backend{
		WebhookSecret: secret,
		Now:           func() time.Time { return now },
		Apply:         func(ev Event) error { applied = append(applied, ev.ReplyID); return nil },
	}
	h := b.Routes()
	body := `{"reply_id":"r1","conversation_id":"c1","text":"您好"}`
	post := func(sig, event string) int {
		r := httptest.NewRequest(http.MethodPost, "/peakdesk/webhook", strings.NewReader(body))
		r.Header.Set(shopapi.SignatureHeader, sig)
		r.Header.Set("X-Peakdesk-Event-Id", event)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	sig := shopapi.SignWebhook(secret, []byte(body), now)
	if code := post(sig, "e1"); code != http.StatusOK {
		t.Fatalf("a genuine delivery: %d", code)
	}
	if code := post(sig, "e1"); code != http.StatusConflict {
		t.Fatalf("the same signature again: %d, want 409", code)
	}
	if code := post(shopapi.SignWebhook(secret, []byte(body), now.Add(time.Second)), "e1"); code != http.StatusOK {
		t.Fatalf("peakdesk's retry of the same event: %d", code)
	}
	if code := post(shopapi.SignWebhook([]byte("other"), []byte(body), now), "e2"); code != http.StatusUnauthorized {
		t.Fatalf("another secret: %d, want 401", code)
	}
	if code := post(shopapi.SignWebhook(secret, []byte(body), now.Add(-10*time.Minute)), "e3"); code != http.StatusBadRequest {
		t.Fatalf("a signature 10 minutes old: %d, want 400", code)
	}
	if len(applied) != 1 || applied[0] != "r1" {
		t.Fatalf("applied %v, want the event once", applied)
	}
}
