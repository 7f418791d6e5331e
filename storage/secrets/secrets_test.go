package secrets_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/storage/secrets"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, secrets.KeySize) }

func TestSealedSecretsOpenOnlyWhereAndWithTheKeyTheyWereSealedFor(t *testing.T) {
	t.Parallel()
	box, err := secrets.New(key(1))
	if err != nil {
		t.Fatal(err)
	}
	const plain = "sk-live-0123456789abcdef"
	sealed, err := box.Seal(plain, "shop_api_settings.secret/demo")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sealed, box.CurrentPrefix()) || strings.Contains(sealed, plain) || !secrets.IsSealed(sealed) {
		t.Fatalf("sealed %q", sealed)
	}
	again, _ := box.Seal(plain, "shop_api_settings.secret/demo")
	if again == sealed {
		t.Fatal("two seals of one value are equal: the nonce is not random")
	}
	if got, err := box.Open(sealed, "shop_api_settings.secret/demo"); err != nil || got != plain {
		t.Fatalf("open: %q, %v", got, err)
	}
	// Copied into another shop's row, it does not open.
	if _, err := box.Open(sealed, "shop_api_settings.secret/other"); !errors.Is(err, secrets.ErrCorrupt) {
		t.Fatalf("open elsewhere: %v", err)
	}
	// Altered, it does not open.
	b := []byte(sealed)
	b[len(b)-3] ^= 1
	if _, err := box.Open(string(b), "shop_api_settings.secret/demo"); !errors.Is(err, secrets.ErrCorrupt) {
		t.Fatalf("open altered: %v", err)
	}
	// Another key does not open it.
	other, _ := secrets.New(key(2))
	if _, err := other.Open(sealed, "shop_api_settings.secret/demo"); !errors.Is(err, secrets.ErrNoKey) {
		t.Fatalf("open with another key: %v", err)
	}
	// After a rotation the previous key still opens it; new seals use the new key.
	rotated, _ := secrets.New(key(2), key(1))
	if got, err := rotated.Open(sealed, "shop_api_settings.secret/demo"); err != nil || got != plain {
		t.Fatalf("open after rotation: %q, %v", got, err)
	}
	if strings.HasPrefix(sealed, rotated.CurrentPrefix()) {
		t.Fatal("the old seal carries the new key's id")
	}
	// Plaintext from before encryption reads as it is; nothing stays nothing.
	if got, err := box.Open("legacy-plain", "x"); err != nil || got != "legacy-plain" {
		t.Fatalf("plaintext: %q, %v", got, err)
	}
	if got, _ := box.Seal("", "x"); got != "" {
		t.Fatalf("empty sealed to %q", got)
	}
}

func TestMasterKeysParseFromHexAndBase64(t *testing.T) {
	t.Parallel()
	k := key(7)
	for _, s := range []string{hex.EncodeToString(k), base64.StdEncoding.EncodeToString(k),
		base64.RawURLEncoding.EncodeToString(k), "  " + base64.StdEncoding.EncodeToString(k) + "\n"} {
		got, err := secrets.ParseKey(s)
		if err != nil || !bytes.Equal(got, k) {
			t.Errorf("ParseKey(%q) = %x, %v", s, got, err)
		}
	}
	for _, bad := range []string{"", "short", base64.StdEncoding.EncodeToString(k[:16]), strings.Repeat("z", 64)} {
		if _, err := secrets.ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

func TestMaskShowsTheLastFourOnlyOfLongSecrets(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"": "", "short": "••••", "sk-0123456789abcd": "••••abcd"} {
		if got := secrets.Mask(in); got != want {
			t.Errorf("Mask(%q) = %q, want %q", in, got, want)
		}
	}
}
