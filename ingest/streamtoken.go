package ingest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/httpjson"
	"github.com/peakdesk/peakdesk/ingest/token"
)

// streamTokens mint and check stream tokens: what a browser puts in the URL
// of an event stream, since EventSource (and the browser's WebSocket)
// cannot send an Authorization header. A stream token names one customer of
// one shop and is good for opening that customer's streams for a short
// while (TTL, 60 s); the stream it opens lives on. It is no JWT and no
// bearer token: only the event-stream endpoints read it, from the query,
// so the customer's long-lived token never appears in a URL.
//
// Format: "st1." + base64url(expiry as 8 bytes of unix seconds, shop, NUL,
// customer) + "." + base64url(16 bytes of HMAC-SHA256 over that), keyed by
// a key derived from the platform key (and verified with the previous ones
// too, like ids).
type streamTokens struct {
	keys [][]byte // keys[0] signs
	ttl  time.Duration
	now  func() time.Time
}

const streamTokenPrefix = "st1."

func newStreamTokens(ttl time.Duration, secret []byte, previous ...[]byte) streamTokens {
	t := streamTokens{ttl: ttl, now: time.Now}
	for _, sec := range append([][]byte{secret}, previous...) {
		m := hmac.New(sha256.New, sec)
		m.Write([]byte("peakdesk stream token key v1"))
		t.keys = append(t.keys, m.Sum(nil))
	}
	return t
}

func streamTokenMAC(key, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(payload)
	return m.Sum(nil)[:16]
}

// mint returns a stream token for customer user of shop and when it stops
// opening streams.
func (t streamTokens) mint(shop, user string) (string, time.Time) {
	exp := t.now().Add(t.ttl).Truncate(time.Second)
	payload := binary.BigEndian.AppendUint64(nil, uint64(exp.Unix()))
	payload = append(payload, shop...)
	payload = append(payload, 0)
	payload = append(payload, user...)
	enc := base64.RawURLEncoding
	return streamTokenPrefix + enc.EncodeToString(payload) + "." + enc.EncodeToString(streamTokenMAC(t.keys[0], payload)), exp
}

// verify returns the claims of stream token s: its shop and customer, no
// scopes. Any fault is unauthenticated, without saying which.
func (t streamTokens) verify(s string) (*token.Claims, error) {
	bad := peakdesk.Errorf(peakdesk.EUnauthenticated, "invalid or expired stream token; get a new one from POST /v1/stream-tokens")
	rest, ok := strings.CutPrefix(s, streamTokenPrefix)
	if !ok || len(s) > 1024 {
		return nil, bad
	}
	p64, m64, ok := strings.Cut(rest, ".")
	enc := base64.RawURLEncoding
	payload, err1 := enc.DecodeString(p64)
	sum, err2 := enc.DecodeString(m64)
	if !ok || err1 != nil || err2 != nil || len(payload) < 8+3 {
		return nil, bad
	}
	valid := false
	for _, key := range t.keys {
		valid = valid || hmac.Equal(streamTokenMAC(key, payload), sum)
	}
	if !valid {
		return nil, bad
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(payload)), 0)
	shop, user, ok := bytes.Cut(payload[8:], []byte{0})
	if !ok || len(user) == 0 || !t.now().Before(exp) {
		return nil, bad
	}
	c := &token.Claims{Shop: string(shop)}
	c.Subject = string(user)
	return c, nil
}

// streamTokenRequest is the optional body of POST /v1/stream-tokens.
type streamTokenRequest struct {
	// UserID names the customer when a service token asks.
	UserID string `json:"user_id"`
}

// postStreamToken answers POST /v1/stream-tokens: a stream token for the
// caller (a customer's token) or for the customer a service token names.
func (e *Edge) postStreamToken(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	claims, err := e.auth.Authenticate(r)
	if err != nil {
		return err
	}
	if claims.Shop == "*" {
		return peakdesk.Errorf(peakdesk.EPermissionDenied, "operator tokens cannot open event streams")
	}
	var req streamTokenRequest
	body, err := httpjson.ReadBody(r, 4<<10)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return jsonError(err)
		}
	}
	user, err := actingUser(claims, &postRequest{UserID: req.UserID})
	if err != nil {
		return err
	}
	if len(user) > maxUserIDLen {
		return peakdesk.FieldError("user_id", "user_id must be at most %d bytes", maxUserIDLen)
	}
	if err := e.chargeRead(ctx, "stream_token", claims, ""); err != nil {
		return err
	}
	if err := e.chargeRead(ctx, "stream_token", claims, user); err != nil {
		return err
	}
	tok, exp := e.push.tokens.mint(claims.Shop, user)
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{
		"stream_token": tok,
		"expires_at":   exp.UTC(),
		"expires_in":   int(e.push.tokens.ttl.Seconds()),
	})
	return nil
}
