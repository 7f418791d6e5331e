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
//
// The key is derived from the platform key, never from a shop's signing
// keys, so rotating shop keys leaves ids alone; after a rotation of the
// platform key itself, ids signed with a previous one stay valid as long as
// that secret is listed (PEAKDESK_JWT_PREVIOUS_SECRETS). New ids are always
// signed with the current one.
type idSigner struct {
	keys [][]byte // keys[0] signs; all of them verify
}

func newIDSigner(secret []byte, previous ...[]byte) idSigner {
	var s idSigner
	for _, sec := range append([][]byte{secret}, previous...) {
		m := hmac.New(sha256.New, sec)
		m.Write([]byte("peakdesk id signing key v1"))
		s.keys = append(s.keys, m.Sum(nil))
	}
	return s
}

const (
	idBodyLen = 12
	idMACLen  = 4
)

func mac(key []byte, kind, shop, user string, body []byte) []byte {
	m := hmac.New(sha256.New, key)
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
	return hex.EncodeToString(append(body, mac(s.keys[0], kind, shop, user, body)...))
}

// Valid reports whether id was issued by New for kind, shop and user, with
// the current platform key or a listed previous one.
func (s idSigner) Valid(kind, shop, user, id string) bool {
	raw, err := hex.DecodeString(id)
	if err != nil || len(raw) != idBodyLen+idMACLen {
		return false
	}
	for _, key := range s.keys {
		want := mac(key, kind, shop, user, raw[:idBodyLen])
		if subtle.ConstantTimeCompare(want, raw[idBodyLen:]) == 1 {
			return true
		}
	}
	return false
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
