// Package secrets seals the secrets peakdesk keeps for shops — shop API
// secrets, webhook secrets, LLM API keys, token-signing keys — so that
// Postgres, its backups and its replicas hold them only encrypted.
//
// A Box seals with AES-256-GCM under the master key (PEAKDESK_MASTER_KEY,
// 32 bytes). A sealed value is text, "pdenc:v1:<key id>:<base64 of nonce
// and ciphertext>", so it fits the text columns the plaintext lived in and
// tells itself apart from a plaintext left by an older version. Each value
// is bound to where it belongs (the additional data names the column and
// the shop), so a sealed secret copied into another shop's row does not
// open. Earlier master keys may be kept in a Box to open what they sealed:
// rotating the master key is "add the new one, re-seal, drop the old one".
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the size of a master key: AES-256.
const KeySize = 32

// Prefix starts every sealed value.
const Prefix = "pdenc:v1:"

// ErrNoKey is returned when a sealed value is read without the key that
// sealed it (no master key configured, or not the one that sealed it).
var ErrNoKey = errors.New("secrets: the value is sealed with a master key this process does not have")

// ErrCorrupt is returned for a sealed value that does not open: altered,
// truncated, or moved from the row it was sealed for.
var ErrCorrupt = errors.New("secrets: the sealed value does not open (altered, or copied from another row)")

// ParseKey reads a master key written as 64 hex digits or as base64 (standard
// or URL alphabet, padded or not) of 32 bytes.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 2*KeySize {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != KeySize {
				return nil, fmt.Errorf("secrets: the key is %d bytes, want %d", len(b), KeySize)
			}
			return b, nil
		}
	}
	return nil, fmt.Errorf("secrets: want %d bytes as 64 hex digits or base64 (e.g. openssl rand -base64 32)", KeySize)
}

// key is one master key and its id.
type key struct {
	id   string // first 4 bytes of SHA-256 of the key, hex: names the key, reveals nothing
	aead cipher.AEAD
}

// Box seals and opens secrets. The first key seals; every key opens. It is
// safe for concurrent use.
type Box struct {
	keys []key
}

// New returns a Box that seals with current and opens with current and any
// of previous.
func New(current []byte, previous ...[]byte) (*Box, error) {
	b := &Box{}
	for i, k := range append([][]byte{current}, previous...) {
		if len(k) != KeySize {
			return nil, fmt.Errorf("secrets: key %d is %d bytes, want %d", i, len(k), KeySize)
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
		sum := sha256.Sum256(k)
		b.keys = append(b.keys, key{id: hex.EncodeToString(sum[:4]), aead: aead})
	}
	return b, nil
}

// KeyID names the key the Box seals with.
func (b *Box) KeyID() string { return b.keys[0].id }

// CurrentPrefix starts every value the Box seals now: a value without it is
// plaintext or sealed under an earlier key, and should be sealed again.
func (b *Box) CurrentPrefix() string { return Prefix + b.KeyID() + ":" }

// Seal encrypts plaintext for the place named by where (e.g.
// "shop_api_settings.secret/demo"). The empty string stays empty: "no
// secret" is not a secret.
func (b *Box) Seal(plaintext, where string) (string, error) {
	if plaintext == "" {
		return "", nil
	}
	k := b.keys[0]
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(plaintext)+k.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("secrets: %w", err)
	}
	sealed := k.aead.Seal(nonce, nonce, []byte(plaintext), []byte(where))
	return Prefix + k.id + ":" + base64.RawStdEncoding.EncodeToString(sealed), nil
}

// Open decrypts a value Seal returned for the same where. A value that is
// not sealed (a plaintext from before encryption) is returned as it is.
func (b *Box) Open(value, where string) (string, error) {
	id, data, sealed, err := split(value)
	if err != nil || !sealed {
		return value, err
	}
	for _, k := range b.keys {
		if k.id != id {
			continue
		}
		if len(data) < k.aead.NonceSize() {
			return "", ErrCorrupt
		}
		n := k.aead.NonceSize()
		plain, err := k.aead.Open(nil, data[:n], data[n:], []byte(where))
		if err != nil {
			return "", ErrCorrupt
		}
		return string(plain), nil
	}
	return "", ErrNoKey
}

// IsSealed reports whether value is a sealed value (by any key).
func IsSealed(value string) bool { return strings.HasPrefix(value, Prefix) }

// split parses a sealed value into its key id and bytes.
func split(value string) (id string, data []byte, sealed bool, err error) {
	rest, ok := strings.CutPrefix(value, Prefix)
	if !ok {
		return "", nil, false, nil
	}
	id, enc, ok := strings.Cut(rest, ":")
	if !ok {
		return "", nil, true, ErrCorrupt
	}
	data, err = base64.RawStdEncoding.DecodeString(enc)
	if err != nil {
		return "", nil, true, ErrCorrupt
	}
	return id, data, true, nil
}

// Mask shows a secret the way it may be shown back: its last four
// characters after a run of dots ("••••f3a9"), or only dots when it is
// shorter than twelve (its last four would be a third of it). Empty stays
// empty.
func Mask(s string) string {
	if s == "" {
		return ""
	}
	r := []rune(s)
	if len(r) < 12 {
		return "••••"
	}
	return "••••" + string(r[len(r)-4:])
}
