// Command shopbackend is the smallest shop backend that integrates with
// peakdesk: it mints chat tokens for its logged-in customers with the shop's
// own signing key, and receives reply webhooks, verifying their signature
// and applying each event once. See docs/integration.md.
//
//	SHOP_ID=demo SHOP_KEY_ID=… SHOP_KEY_SECRET=… WEBHOOK_SECRET=… go run ./docs/examples/shopbackend
package main

import (
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/peakdesk/peakdesk/outbox/shopapi"
)

func main() {
	b := &Backend{
		Shop:          mustEnv("SHOP_ID"),
		KeyID:         mustEnv("SHOP_KEY_ID"),
		KeySecret:     []byte(mustEnv("SHOP_KEY_SECRET")),
		WebhookSecret: []byte(mustEnv("WEBHOOK_SECRET")),
		Now:           time.Now,
		Apply: func(ev Event) error {
			log.Printf("reply %s in conversation %s", ev.ReplyID, ev.ConversationID)
			return nil
		},
	}
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:9000"
	}
	log.Printf("shop backend on http://%s", addr)
	log.Fatal(http.ListenAndServe(addr, b.Routes()))
}

func mustEnv(name string) string {
	v := os.Getenv(name)
	if v == "" {
		log.Fatalf("%s is required", name)
	}
	return v
}

// Backend is the part of a shop's backend that talks to peakdesk.
type Backend struct {
	Shop          string // the shop id peakdesk knows the shop by
	KeyID         string // kid of the shop's signing key (peakdesk shop rotate-key prints it)
	KeySecret     []byte // that key's secret
	WebhookSecret []byte // the shop's webhook secret
	Now           func() time.Time
	Apply         func(Event) error // what the shop does with a reply

	mu   sync.Mutex
	seen map[string]time.Time // signatures and event ids already accepted
}

// Event is the part of a reply webhook this backend reads.
type Event struct {
	ReplyID        string `json:"reply_id"`
	ConversationID string `json:"conversation_id"`
	Text           string `json:"text"`
}

// Routes serves /chat-token and /peakdesk/webhook.
func (b *Backend) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /chat-token", b.chatToken)
	mux.HandleFunc("POST /peakdesk/webhook", b.webhook)
	return mux
}

// CustomerToken mints the token the shop's chat window sends to peakdesk:
// HS256 under the shop's key, kid in the header, the customer in sub.
func (b *Backend) CustomerToken(customer string, ttl time.Duration) (string, error) {
	now := b.Now()
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"shop": b.Shop,
		"sub":  customer,
		"iat":  now.Unix(),
		"exp":  now.Add(ttl).Unix(),
	})
	t.Header["kid"] = b.KeyID
	return t.SignedString(b.KeySecret)
}

func (b *Backend) chatToken(w http.ResponseWriter, r *http.Request) {
	// A real shop takes the customer from its own session, never from the
	// query string; this example trusts it to stay short.
	customer := r.URL.Query().Get("customer")
	if customer == "" {
		http.Error(w, "customer is required", http.StatusBadRequest)
		return
	}
	tok, err := b.CustomerToken(customer, time.Hour)
	if err != nil {
		http.Error(w, "cannot sign", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"token": tok})
}

func (b *Backend) webhook(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	sig := r.Header.Get(shopapi.SignatureHeader)
	_, err = shopapi.VerifyWebhook(b.WebhookSecret, sig, body, b.Now(), shopapi.WebhookTolerance)
	switch {
	case errors.Is(err, shopapi.ErrWebhookTimestamp):
		http.Error(w, "signature too old", http.StatusBadRequest)
		return
	case err != nil:
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	eventID := r.Header.Get("X-Peakdesk-Event-Id")
	if !b.remember("sig:" + sig) {
		http.Error(w, "signature already used", http.StatusConflict) // peakdesk retries with a fresh one
		return
	}
	if !b.remember("event:" + eventID) {
		w.WriteHeader(http.StatusOK) // a retry of an event already applied
		return
	}
	var ev Event
	if err := json.Unmarshal(body, &ev); err != nil {
		b.forget("event:" + eventID)
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	if err := b.Apply(ev); err != nil {
		b.forget("event:" + eventID) // let peakdesk's retry apply it
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// remember records key and reports whether it was new. Entries older than
// the signature tolerance are dropped: a signature that old is refused by
// VerifyWebhook anyway. A production shop keeps event ids in its database,
// in the transaction that applies the event.
func (b *Backend) remember(key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.Now()
	if b.seen == nil {
		b.seen = make(map[string]time.Time)
	}
	for k, at := range b.seen {
		if now.Sub(at) > 2*shopapi.WebhookTolerance {
			delete(b.seen, k)
		}
	}
	if _, ok := b.seen[key]; ok {
		return false
	}
	b.seen[key] = now
	return true
}

func (b *Backend) forget(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.seen, key)
}
