// Package token is peakdesk's bearer tokens: the claims and scopes it
// reads, minting with the platform key or a shop's own key, and the
// Authenticator that verifies them (HS256; shop keys read from Postgres by
// kid and cached, rotated with an overlap). The edge, the operator API and
// the load generator share it.
package token

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sync/singleflight"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// Token scopes.
const (
	// ScopeUrgent lets a client hint priority p0 or p1.
	ScopeUrgent = "priority:urgent"
	// ScopeService lets a backend service post on behalf of any end user
	// named by user_id in the body.
	ScopeService = "service"
	// ScopeOps lets an operator read the operator API.
	ScopeOps = "ops"
	// ScopeOpsWrite lets an operator act through the operator API.
	ScopeOpsWrite = "ops:write"
	// ScopeAgent lets a shop's human agent (the subject) work the agent
	// API — claim, reply, resolve, hand back — and read the shop's
	// conversations. Shop keys may grant it.
	ScopeAgent = "agent"
	// ScopeAdmin lets an operator administer shops (/v1/admin/shops): a
	// platform operator (shop "*") every shop, a shop's operator its own.
	ScopeAdmin = "admin"
)

// IsOperatorScope reports whether scope s is an operator's: ops, ops:write
// or any later ops:… scope, or admin. Only platform-key tokens may carry
// one.
func IsOperatorScope(s string) bool {
	return s == ScopeOps || strings.HasPrefix(s, ScopeOps+":") || s == ScopeAdmin
}

// Claims are the JWT claims peakdesk reads: the tenant (shop), the subject
// (end user or service name) and space-separated scopes.
type Claims struct {
	Shop  string `json:"shop"`
	Scope string `json:"scope,omitempty"`
	jwt.RegisteredClaims
	// KeyID is the kid of the shop key that signed the token; empty for a
	// token signed with the platform key.
	KeyID string `json:"-"`
}

// HasScope reports whether the claims carry scope s.
func (c *Claims) HasScope(s string) bool {
	return slices.Contains(strings.Fields(c.Scope), s)
}

func (c *Claims) hasOperatorScope() bool {
	return slices.ContainsFunc(strings.Fields(c.Scope), IsOperatorScope)
}

// Sign signs an HS256 token with the platform key (PEAKDESK_JWT_SECRET)
// for shop and subject with the given scopes, valid for ttl. Platform tokens
// carry no kid; they are for operators, dev mode, tests and tools.
func Sign(secret []byte, shop, sub string, scopes []string, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("new token: empty secret")
	}
	return signToken(secret, "", shop, sub, scopes, ttl)
}

// SignWithShopKey signs an HS256 token with shop key k for its shop and
// subject sub, valid for ttl; the JWT header's kid names the key. A shop's
// own backend mints its customers' tokens the same way with the key's
// secret. Operator scopes are refused: only the platform key grants them.
func SignWithShopKey(k *storage.ShopKey, sub string, scopes []string, ttl time.Duration) (string, error) {
	if k == nil || k.Secret == "" || k.KID == "" {
		return "", errors.New("new shop token: no key")
	}
	if i := slices.IndexFunc(scopes, IsOperatorScope); i >= 0 {
		return "", fmt.Errorf("new shop token: scope %q needs the platform key", scopes[i])
	}
	return signToken([]byte(k.Secret), k.KID, k.ShopID, sub, scopes, ttl)
}

func signToken(secret []byte, kid, shop, sub string, scopes []string, ttl time.Duration) (string, error) {
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
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, &c)
	if kid != "" {
		t.Header["kid"] = kid
	}
	s, err := t.SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	return s, nil
}

// ShopSigningKey returns shop's current signing key, creating the shop's
// first key if it has none. ErrNotFound (storage) if the shop does not exist.
func ShopSigningKey(ctx context.Context, db *storage.DB, shop string) (*storage.ShopKey, error) {
	kid, secret := newKeyMaterial()
	return db.EnsureShopKey(ctx, shop, kid, secret)
}

// RotateShopKey gives shop a new signing key and lets its older keys expire
// overlap from now, so tokens minted with them keep working that long.
func RotateShopKey(ctx context.Context, db *storage.DB, shop string, overlap time.Duration) (*storage.ShopKey, error) {
	if overlap < 0 {
		return nil, errors.New("rotate shop key: overlap must not be negative")
	}
	kid, secret := newKeyMaterial()
	return db.RotateShopKey(ctx, shop, kid, secret, overlap)
}

// newKeyMaterial returns a fresh kid (24 hex) and secret (32 random bytes
// as 43 base64url characters, usable as a string key by any JWT library).
func newKeyMaterial() (kid, secret string) {
	var b [12 + 32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:12]), base64.RawURLEncoding.EncodeToString(b[12:])
}

// validKID reports whether kid can name a shop key (as the schema allows),
// so malformed ones are refused without a database read.
func validKID(kid string) bool {
	if len(kid) < 8 || len(kid) > 64 {
		return false
	}
	for i := 0; i < len(kid); i++ {
		if c := kid[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Config configures an Authenticator. Secret is required.
type Config struct {
	// Secret is the platform key (PEAKDESK_JWT_SECRET). It verifies every
	// token without a kid: operator tokens, dev and tool tokens.
	Secret []byte
	// PreviousSecrets are earlier platform keys that still verify tokens
	// without a kid, so rotating the platform key logs nobody out. Drop a
	// secret from the list to revoke it.
	PreviousSecrets [][]byte
	// DB holds the shops' signing keys; nil accepts platform tokens only.
	DB *storage.DB
	// KeyRefresh is how long a shop key read from Postgres is trusted
	// before it is read again: a rotation or revocation reaches this
	// process within it. Default 5 s.
	KeyRefresh time.Duration
	// UnknownKeyTTL is how long a kid Postgres does not know is remembered
	// as unknown. Default 2 s.
	UnknownKeyTTL time.Duration
	// MaxKeys bounds the key cache. Default 10,000.
	MaxKeys int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	c.KeyRefresh = cmp.Or(c.KeyRefresh, 5*time.Second)
	c.UnknownKeyTTL = cmp.Or(c.UnknownKeyTTL, 2*time.Second)
	c.MaxKeys = cmp.Or(c.MaxKeys, 10_000)
	if c.Now == nil {
		c.Now = time.Now
	}
}

func (c *Config) validate() error {
	if len(c.Secret) == 0 {
		return errors.New("token: config: Secret is required")
	}
	for i, s := range c.PreviousSecrets {
		if len(s) == 0 {
			return fmt.Errorf("token: config: PreviousSecrets[%d] is empty", i)
		}
	}
	return nil
}

// Authenticator checks bearer tokens: HS256, signed either with the platform
// key (no kid) or with the key of the shop the token names (kid).
//
// It remembers tokens it has verified (a client sends the same token with
// every message) so the signature is checked once per token, not once per
// request; expiry, and for shop-key tokens the key's not_after, are checked
// every time.
//
// Shop keys are read from Postgres by kid and cached: a cached key is read
// again after KeyRefresh, concurrent misses of one kid share one read, at
// most maxKeyLoads reads run at once (so a flood of made-up kids can hold
// only that many database connections), an unknown kid is remembered for
// UnknownKeyTTL, and while Postgres is unreachable the keys already known
// keep working.
type Authenticator struct {
	cfg      Config
	platform jwt.VerificationKeySet
	parser   *jwt.Parser
	loads    singleflight.Group
	loadSem  chan struct{}
	keyReads atomic.Int64 // shop keys read from Postgres, for tests

	mu       sync.Mutex
	verified map[string]*Claims
	keys     map[string]keyEntry
	forgets  uint64 // calls of ForgetShop: a read begun before one is not cached
}

type keyEntry struct {
	key     *storage.ShopKey // nil: Postgres has no such key
	fetched time.Time
}

// maxVerified bounds the verified-token cache; when full it starts over.
const maxVerified = 100_000

// maxKeyLoads bounds concurrent key reads from Postgres.
const maxKeyLoads = 4

// tokenLeeway is the clock skew allowed on a token's times.
const tokenLeeway = 5 * time.Second

// NewAuthenticator returns an Authenticator that accepts platform-key tokens
// only (HS256 signed with secret, no kid). An empty secret verifies nothing.
func NewAuthenticator(secret []byte) *Authenticator {
	cfg := Config{Secret: secret}
	cfg.setDefaults()
	return newAuthenticator(cfg)
}

// NewShopAuthenticator returns an Authenticator for cfg: platform tokens,
// and with cfg.DB shop-key tokens.
func NewShopAuthenticator(cfg Config) (*Authenticator, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return newAuthenticator(cfg), nil
}

func newAuthenticator(cfg Config) *Authenticator {
	a := &Authenticator{
		cfg:      cfg,
		parser:   newParser(cfg.Now),
		loadSem:  make(chan struct{}, maxKeyLoads),
		verified: map[string]*Claims{},
		keys:     map[string]keyEntry{},
	}
	for _, s := range append([][]byte{cfg.Secret}, cfg.PreviousSecrets...) {
		if len(s) > 0 { // HMAC takes an empty key: anyone could sign with it
			a.platform.Keys = append(a.platform.Keys, s)
		}
	}
	return a
}

func newParser(now func() time.Time) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(tokenLeeway),
		jwt.WithTimeFunc(now),
	)
}

// Authenticate returns the claims of the request's bearer token, or an
// unauthenticated error that says what is wrong without echoing the token
// (overloaded when the token's shop key cannot be read right now).
func (a *Authenticator) Authenticate(r *http.Request) (*Claims, error) {
	h := r.Header.Get("Authorization")
	raw, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || strings.TrimSpace(raw) == "" {
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "missing bearer token")
	}
	raw = strings.TrimSpace(raw)
	ctx := r.Context()
	now := a.cfg.Now()
	a.mu.Lock()
	cached := a.verified[raw]
	a.mu.Unlock()
	if cached != nil {
		if now.After(cached.ExpiresAt.Add(tokenLeeway)) {
			return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token expired")
		}
		if cached.KeyID != "" {
			// The key may have expired or gone since the token was cached.
			k, err := a.shopKey(ctx, cached.KeyID)
			if err != nil {
				return nil, err
			}
			if err := checkShopKey(k, cached, now); err != nil {
				return nil, err
			}
		}
		return cached, nil
	}

	var c Claims
	var key *storage.ShopKey
	var keyErr error
	_, err := a.parser.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
		v, hasKID := t.Header["kid"]
		if !hasKID {
			return a.platform, nil
		}
		kid, _ := v.(string)
		switch {
		case a.cfg.DB == nil || !validKID(kid):
			keyErr = peakdesk.Errorf(peakdesk.EUnauthenticated, "token signed with an unknown key")
		default:
			key, keyErr = a.shopKey(ctx, kid)
			if keyErr == nil && key == nil {
				keyErr = peakdesk.Errorf(peakdesk.EUnauthenticated, "token signed with an unknown key")
			}
		}
		if keyErr != nil {
			return nil, keyErr
		}
		return []byte(key.Secret), nil
	})
	switch {
	case keyErr != nil:
		return nil, keyErr
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token expired")
	case err != nil:
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "invalid token")
	case c.Shop == "" || c.Subject == "":
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token lacks shop or sub claim")
	case !peakdesk.ValidShopID(c.Shop) && c.Shop != "*":
		return nil, peakdesk.Errorf(peakdesk.EUnauthenticated, "token shop claim is malformed")
	}
	if key != nil {
		c.KeyID = key.KID
		if err := checkShopKey(key, &c, now); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	if len(a.verified) >= maxVerified {
		clear(a.verified)
	}
	a.verified[raw] = &c
	a.mu.Unlock()
	return &c, nil
}

// checkShopKey refuses a token signed with shop key k (nil: the key is gone)
// that claims another shop or an operator scope, or whose key has expired.
func checkShopKey(k *storage.ShopKey, c *Claims, now time.Time) error {
	switch {
	case k == nil:
		return peakdesk.Errorf(peakdesk.EUnauthenticated, "token signed with an unknown key")
	case k.ShopID != c.Shop:
		return peakdesk.Errorf(peakdesk.EUnauthenticated, "token signed with another shop's key")
	case c.hasOperatorScope():
		return peakdesk.Errorf(peakdesk.EUnauthenticated, "operator scopes need a platform token")
	case !k.ValidAt(now):
		return peakdesk.Errorf(peakdesk.EUnauthenticated, "token signed with an expired key")
	}
	return nil
}

// shopKey returns the shop key kid, nil if Postgres does not know it.
func (a *Authenticator) shopKey(ctx context.Context, kid string) (*storage.ShopKey, error) {
	now := a.cfg.Now()
	a.mu.Lock()
	ent, ok := a.keys[kid]
	a.mu.Unlock()
	if ok && now.Sub(ent.fetched) < a.entryTTL(ent) {
		return ent.key, nil
	}
	ch := a.loads.DoChan(kid, func() (any, error) { return a.loadKey(ctx, kid) })
	select {
	case res := <-ch:
		if res.Err == nil {
			return res.Val.(*storage.ShopKey), nil
		}
		if ok && ent.key != nil {
			return ent.key, nil // Postgres is unreachable: keep what we knew
		}
		return nil, &peakdesk.Error{Code: peakdesk.EOverloaded, Message: "cannot verify the token's key right now, retry later",
			RetryAfter: time.Second}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (a *Authenticator) entryTTL(e keyEntry) time.Duration {
	if e.key == nil {
		return a.cfg.UnknownKeyTTL
	}
	return a.cfg.KeyRefresh
}

// loadKey reads key kid from Postgres into the cache. It runs once per kid
// at a time (singleflight), on behalf of every request waiting for it, so a
// waiter that gives up does not cancel it.
func (a *Authenticator) loadKey(ctx context.Context, kid string) (*storage.ShopKey, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	select {
	case a.loadSem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	a.mu.Lock()
	forgets := a.forgets
	// A load that ended between the caller's look at the cache and this
	// one's start has cached the key: no second read.
	if ent, ok := a.keys[kid]; ok && a.cfg.Now().Sub(ent.fetched) < a.entryTTL(ent) {
		a.mu.Unlock()
		<-a.loadSem
		return ent.key, nil
	}
	a.mu.Unlock()
	a.keyReads.Add(1)
	k, err := a.cfg.DB.ShopKeyByID(ctx, kid)
	<-a.loadSem
	if errors.Is(err, storage.ErrNotFound) {
		k, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	now := a.cfg.Now()
	a.mu.Lock()
	if len(a.keys) >= a.cfg.MaxKeys {
		a.evictKeysLocked(now)
	}
	if a.forgets == forgets {
		a.keys[kid] = keyEntry{key: k, fetched: now}
	}
	a.mu.Unlock()
	return k, nil
}

// ForgetShop drops the cached keys of shop (every shop's for "") and every
// kid remembered as unknown: the shop's keys changed (a rotation, a
// revocation, a first key). Subscribe it to the settings notifications
// (storage/shopwatch).
func (a *Authenticator) ForgetShop(shop string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.forgets++
	for kid, e := range a.keys {
		if shop == "" || e.key == nil || e.key.ShopID == shop {
			delete(a.keys, kid)
		}
	}
}

// evictKeysLocked makes room in the key cache: first entries due for a
// refresh and unknown kids, then, if a flood of real kids still fills it,
// any quarter of the rest.
func (a *Authenticator) evictKeysLocked(now time.Time) {
	for kid, e := range a.keys {
		if e.key == nil || now.Sub(e.fetched) >= a.entryTTL(e) {
			delete(a.keys, kid)
		}
	}
	for kid := range a.keys {
		if len(a.keys) < a.cfg.MaxKeys*3/4 {
			break
		}
		delete(a.keys, kid)
	}
}
