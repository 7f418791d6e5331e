package ingest

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/httpjson"
	"github.com/peakdesk/peakdesk/storage"
)

// Browsers (CORS). A shop lists the web origins whose pages may call the
// chat API for it (shops.allowed_origins); dev mode adds its own
// (DevOrigins) for every shop. A request from a page of another origin
// carries an Origin header: the edge answers it with CORS headers when the
// token's shop allows that origin, and refuses it (403, no CORS headers)
// when the shop does not, so a page of a foreign origin can neither read
// nor cause anything. Requests without an Origin (apps, gateways, curl) and
// same-origin ones are not affected. Preflights carry no token, so they are
// answered for origins some shop allows; only the chat API's paths answer
// them, and nothing else of the process sends CORS headers.

// originPolicy answers "does some shop allow this origin?" for preflights,
// from Postgres, cached.
type originPolicy struct {
	db  *storage.DB
	dev []string // allowed for every shop (dev mode)
	ttl time.Duration

	mu      sync.Mutex
	entries map[string]originEntry
}

type originEntry struct {
	ok    bool
	until time.Time
}

func newOriginPolicy(db *storage.DB, dev []string) *originPolicy {
	return &originPolicy{db: db, dev: dev, ttl: 30 * time.Second, entries: map[string]originEntry{}}
}

func (p *originPolicy) allowedAnywhere(ctx context.Context, origin string) bool {
	if slices.Contains(p.dev, origin) {
		return true
	}
	now := time.Now()
	p.mu.Lock()
	ent, ok := p.entries[origin]
	p.mu.Unlock()
	if ok && now.Before(ent.until) {
		return ent.ok
	}
	allowed, err := p.db.OriginAllowedAnywhere(ctx, origin)
	if err != nil {
		return ok && ent.ok // Postgres is unreachable: keep what we knew
	}
	p.mu.Lock()
	if len(p.entries) >= 10_000 {
		clear(p.entries)
	}
	p.entries[origin] = originEntry{ok: allowed, until: now.Add(p.ttl)}
	p.mu.Unlock()
	return allowed
}

// originAllowed reports whether shop allows pages of origin to call the
// API (its settings are cached with the shop's other settings).
func (e *Edge) originAllowed(ctx context.Context, shop, origin string) bool {
	if slices.Contains(e.push.origins.dev, origin) {
		return true
	}
	info, err := e.shops.lookup(ctx, shop)
	return err == nil && info.exists && slices.Contains(info.origins, origin)
}

// sameOrigin reports whether origin is the edge's own host (a page the
// process serves itself, like dev's /demo).
func sameOrigin(r *http.Request, origin string) bool {
	_, host, ok := strings.Cut(origin, "://")
	return ok && strings.EqualFold(host, r.Host)
}

// crossOrigin applies the CORS rules to a request on a chat API route:
// CORS headers when the token's shop allows the page's origin, a
// permission_denied error when it does not. A request whose token does not
// authenticate gets the headers if some shop allows the origin, so a
// widget can read its 401 and fetch a new token.
func (e *Edge) crossOrigin(w http.ResponseWriter, r *http.Request, route string) error {
	origin := r.Header.Get("Origin")
	if origin == "" || sameOrigin(r, origin) {
		return nil
	}
	h := w.Header()
	h.Add("Vary", "Origin")
	ctx := r.Context()
	allowed := false
	if shop := e.requestShop(r, route); shop == "" {
		allowed = e.push.origins.allowedAnywhere(ctx, origin)
	} else if allowed = e.originAllowed(ctx, shop, origin); !allowed {
		e.metrics.readRefusals.WithLabelValues(route, "origin").Inc()
		return peakdesk.Errorf(peakdesk.EPermissionDenied, "pages of this origin may not call this shop's API")
	}
	if allowed {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Expose-Headers", "Retry-After, traceparent")
	}
	return nil
}

// requestShop is the shop of the request's credentials ("" when they do not
// authenticate): the stream token on the event-stream routes, else the
// bearer token (verified tokens are cached, so the handler's own check
// costs nothing more).
func (e *Edge) requestShop(r *http.Request, route string) string {
	var shop string
	if isStreamRoute(route) && r.URL.Query().Has("stream_token") {
		if c, err := e.push.tokens.verify(r.URL.Query().Get("stream_token")); err == nil {
			shop = c.Shop
		}
	} else if c, err := e.auth.Authenticate(r); err == nil {
		shop = c.Shop
	}
	if shop == "*" {
		return ""
	}
	return shop
}

// preflight answers a CORS preflight on a chat API path.
func (e *Edge) preflight(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	h := w.Header()
	h.Add("Vary", "Origin")
	if origin == "" || !(sameOrigin(r, origin) || e.push.origins.allowedAnywhere(r.Context(), origin)) {
		httpjson.WriteError(w, r, e.log, peakdesk.Errorf(peakdesk.EPermissionDenied, "origin not allowed"))
		return
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, traceparent")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

// browserPaths are the chat API paths a page may call cross-origin.
var browserPaths = []string{
	"/v1/messages", "/v1/messages:batch", "/v1/messages/{id}",
	"/v1/conversations/{id}", "/v1/conversations/{id}/events",
	"/v1/events", "/v1/stream-tokens",
}
