package shopapi_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/outbox/shopapi"
)

func TestVerifyWebhook(t *testing.T) {
	t.Parallel()
	secret := []byte("whsec-test")
	body := []byte(`{"event_id":"e1","type":"reply.created"}`)
	now := time.Unix(1_731_283_200, 0) // 2024-11-11 00:00 UTC
	sig := shopapi.SignWebhook(secret, body, now)
	v1 := sig[strings.Index(sig, "v1="):]
	tests := []struct {
		name   string
		header string
		body   []byte
		at     time.Time // the receiver's clock
		want   error
	}{
		{"valid", sig, body, now, nil},
		{"valid, received 4m59s later", sig, body, now.Add(4*time.Minute + 59*time.Second), nil},
		{"valid, sender's clock 4m ahead", sig, body, now.Add(-4 * time.Minute), nil},
		{"valid among other signatures", fmt.Sprintf("t=%d,v1=%064x,%s,v0=legacy", now.Unix(), 0, v1), body, now, nil},
		{"valid with spaces", strings.ReplaceAll(sig, ",", ", "), body, now, nil},
		{"too old", sig, body, now.Add(5*time.Minute + time.Second), shopapi.ErrWebhookTimestamp},
		{"from the future", sig, body, now.Add(-6 * time.Minute), shopapi.ErrWebhookTimestamp},
		{"tampered body", sig, append([]byte(nil), append(body, ' ')...), now, shopapi.ErrWebhookSignature},
		{"other secret", shopapi.SignWebhook([]byte("other"), body, now), body, now, shopapi.ErrWebhookSignature},
		{"timestamp moved", fmt.Sprintf("t=%d,%s", now.Unix()+1, v1), body, now, shopapi.ErrWebhookSignature},
		{"no timestamp", v1, body, now, shopapi.ErrWebhookSignature},
		{"no signature", fmt.Sprintf("t=%d", now.Unix()), body, now, shopapi.ErrWebhookSignature},
		{"not hex", fmt.Sprintf("t=%d,v1=zz", now.Unix()), body, now, shopapi.ErrWebhookSignature},
		{"old scheme", "sha256=" + strings.TrimPrefix(v1, "v1="), body, now, shopapi.ErrWebhookSignature},
		{"empty", "", body, now, shopapi.ErrWebhookSignature},
	}
	for _, tc := range tests {
		signedAt, err := shopapi.VerifyWebhook(secret, tc.header, tc.body, tc.at, 0)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if err == nil && !signedAt.Equal(now) {
			t.Errorf("%s: signed at %v, want %v", tc.name, signedAt, now)
		}
	}
	if _, err := shopapi.VerifyWebhook(secret, sig, body, now.Add(time.Minute), 30*time.Second); !errors.Is(err, shopapi.ErrWebhookTimestamp) {
		t.Errorf("custom tolerance: %v", err)
	}
	if a, b := shopapi.SignWebhook(secret, body, now), shopapi.SignWebhook(secret, body, now.Add(time.Second)); a == b {
		t.Error("signatures a second apart must differ")
	}
}

// How a shop verifies a reply webhook: check the signature and its age,
// refuse a signature it has accepted before, and apply each event once.
func ExampleVerifyWebhook() {
	secret := []byte("the shop's webhook secret")
	body := []byte(`{"event_id":"pd_whk_1","type":"reply.created"}`)
	sentAt := time.Unix(1_731_283_200, 0)
	header := shopapi.SignWebhook(secret, body, sentAt) // what peakdesk sends

	seen := map[string]bool{} // accepted signatures, kept for the tolerance
	receive := func(header string, body []byte, now time.Time) string {
		t, err := shopapi.VerifyWebhook(secret, header, body, now, shopapi.WebhookTolerance)
		switch {
		case errors.Is(err, shopapi.ErrWebhookTimestamp):
			return "400 too old"
		case err != nil:
			return "401 bad signature"
		case seen[shopapi.SignWebhook(secret, body, t)]:
			return "409 replayed"
		}
		seen[shopapi.SignWebhook(secret, body, t)] = true
		return "200 ok"
	}
	fmt.Println(receive(header, body, sentAt.Add(time.Second)))
	fmt.Println(receive(header, body, sentAt.Add(2*time.Second)))
	fmt.Println(receive(header, body, sentAt.Add(10*time.Minute)))
	fmt.Println(receive(header, []byte(`{"event_id":"pd_whk_2"}`), sentAt))
	// Output:
	// 200 ok
	// 409 replayed
	// 400 too old
	// 401 bad signature
}
