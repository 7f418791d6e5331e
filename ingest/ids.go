package ingest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
)

// idSigner makes and checks peakdesk's 32-hex ids. An id is 12 bytes of
// randomness (or of a hash of the idempotency key, so a repeat gets the same
// id) followed by 4 bytes of HMAC over shop, user and those 12 bytes. The
// edge can thus tell an id it issued to this shop and user — a message still
// in the queue, a conversation whose first message is not yet stored —
// without a database read on the hot path.
type idSigner struct {
	key []byte
}

func newIDSigner(secret []byte) idSigner {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("peakdesk id signing key v1"))
	return idSigner{key: m.Sum(nil)}
}

const (
	idBodyLen = 12
	idMACLen  = 4
)

func (s idSigner) mac(kind, shop, user string, body []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	for _, part := range []string{kind, shop, user} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	m.Write(body)
	return m.Sum(nil)[:idMACLen]
}

// New returns a fresh id of kind ("msg" or "conv") for shop and user. When
// key is non-empty the id is derived from it, so the same key always gives
// the same id.
func (s idSigner) New(kind, shop, user, key string) string {
	body := make([]byte, idBodyLen, idBodyLen+idMACLen)
	if key == "" {
		_, _ = rand.Read(body)
	} else {
		h := sha256.New()
		for _, part := range []string{"peakdesk idempotent id", kind, shop, key} {
			h.Write([]byte(part))
			h.Write([]byte{0})
		}
		copy(body, h.Sum(nil))
	}
	return hex.EncodeToString(append(body, s.mac(kind, shop, user, body)...))
}

// Valid reports whether id was issued by New for kind, shop and user.
func (s idSigner) Valid(kind, shop, user, id string) bool {
	raw, err := hex.DecodeString(id)
	if err != nil || len(raw) != idBodyLen+idMACLen {
		return false
	}
	want := s.mac(kind, shop, user, raw[:idBodyLen])
	return subtle.ConstantTimeCompare(want, raw[idBodyLen:]) == 1
}

func isHexID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
