package ingest

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/peakdesk/peakdesk"
)

// Token scopes.
const (
	// ScopeUrgent lets a client hint priority p0.
	ScopeUrgent = "priority:urgent"
	// ScopeService lets a backend service post on behalf of any end user
	// named by user_id in the body.
	ScopeService = "service"
	// ScopeOps lets an operator read the operator API.
	ScopeOps = "ops"
	// ScopeOpsWrite lets an operator act through the operator API.
	ScopeOpsWrite = "ops:write"
)

// Claims are the JWT claims peakdesk reads: the tenant (shop), the subject
// (end user or service name) and space-separated scopes.
type Claims struct {
	Shop  string `json:"shop"`
	Scope string `json:"scope,omitempty"`
	jwt.RegisteredClaims
}

// HasScope reports whether the claims carry scope s.
func (c *Claims) HasScope(s string) bool {
	return slices.Contains(strings.Fields(c.Scope), s)
}

// NewToken signs an HS256 token for shop and subject with the given scopes,
// valid for ttl.
func NewToken(secret []byte, shop, sub string, scopes []string, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("new token: empty secret")
	}
	if shop == "" || sub == "" {
		return "", errors.New("new token: shop and sub are required")
	}
	now := time.Now()
	c := Claims{
		Shop:  shop,
		Scope: strings.Join(scopes, " "),
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, &c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	return s, nil
}

// Authenticator checks bearer tokens. It remembers tokens it has verified
// (a client sends the same token with every message) so the signature is
// checked once per token, not once per request; expiry is checked every time.
type Authenticator struct {
	secret []byte
	parser *jwt.Parser

	mu       sync.Mutex
	verified map[string]*Claims
}

// maxVerified bounds the verified-token cache; when full it starts over.
const maxVerified = 100_000

// NewAuthenticator returns an Authenticator for HS256 tokens signed with secret.
func NewAuthenticator(secret []byte) *Authenticator {
	return &Authenticator{
		secret: secret,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(),
			jwt.WithLeeway(5*time.Second),
		),
		verified: map[string]*Claims{},
	}
}

// Authenticate returns the claims of the request's bearer token, or an
// unauthenticated error that says what is wrong without echoing the token.
func (a *Authenticator) Authenticate(r *http.Request) (*Claims, error) {
	h := r.Header.Get("Authorization")
	raw, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || strings.TrimSpace(raw) == "" {
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "missing bearer token")
	}
	raw = strings.TrimSpace(raw)
	a.mu.Lock()
	cached := a.verified[raw]
	a.mu.Unlock()
	if cached != nil {
		if time.Now().After(cached.ExpiresAt.Add(5 * time.Second)) {
			return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token expired")
		}
		return cached, nil
	}
	var c Claims
	_, err := a.parser.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) {
		return a.secret, nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token expired")
	case err != nil:
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "invalid token")
	case c.Shop == "" || c.Subject == "":
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token lacks shop or sub claim")
	case !validShopID(c.Shop) && c.Shop != "*":
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token shop claim is malformed")
	}
	a.mu.Lock()
	if len(a.verified) >= maxVerified {
		clear(a.verified)
	}
	a.verified[raw] = &c
	a.mu.Unlock()
	return &c, nil
}

// validShopID reports whether s can name a shop: it becomes a NATS subject
// token, so only [A-Za-z0-9_-], 1..64 bytes.
func validShopID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
