package shopapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries a reply webhook's signature, Stripe's scheme:
//
//	Peakdesk-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">
//
// keyed with the shop's webhook secret. Every delivery attempt is signed
// anew with the time it is sent, so a receiver can refuse old signatures
// and signatures it has seen before (VerifyWebhook).
const SignatureHeader = "Peakdesk-Signature"

// WebhookTolerance is how far a webhook's signature time may be from the
// receiver's clock, either way, before the receiver refuses it.
const WebhookTolerance = 5 * time.Minute

// Errors of VerifyWebhook.
var (
	// ErrWebhookSignature: the header is missing or malformed, or no v1
	// signature matches the body under the secret.
	ErrWebhookSignature = errors.New("webhook signature does not match")
	// ErrWebhookTimestamp: the signature is genuine but was made more than
	// the tolerance before (or after) now: a replay, or a badly set clock.
	ErrWebhookTimestamp = errors.New("webhook timestamp outside the tolerance")
)

// SignWebhook returns the Peakdesk-Signature value of body sent at t under
// secret.
func SignWebhook(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(webhookMAC(secret, ts, body))
}

func webhookMAC(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// VerifyWebhook checks a Peakdesk-Signature header of a webhook's raw body
// the way a shop should: some v1 signature matches HMAC-SHA256 of "t.body"
// under secret (compared in constant time), and t is within tolerance of now
// (WebhookTolerance when tolerance is not positive). It returns the
// signature time. Unknown keys in the header are ignored, so new signature
// versions can be added beside v1.
//
// It cannot tell a replay within the tolerance from the original: a receiver
// remembers the signatures it accepted for the tolerance and refuses one it
// has seen (SignWebhook(secret, body, t) is the canonical form to
// remember), and deduplicates effects by the event id, which is the same on
// every retry while the signature is not.
func VerifyWebhook(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) (time.Time, error) {
	if tolerance <= 0 {
		tolerance = WebhookTolerance
	}
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if sig, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, sig)
			}
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: no valid t= in the %s header", ErrWebhookSignature, SignatureHeader)
	}
	if len(sigs) == 0 {
		return time.Time{}, fmt.Errorf("%w: no valid v1= in the %s header", ErrWebhookSignature, SignatureHeader)
	}
	want := webhookMAC(secret, ts, body)
	matched := false
	for _, sig := range sigs {
		matched = hmac.Equal(sig, want) || matched
	}
	if !matched {
		return time.Time{}, ErrWebhookSignature
	}
	t := time.Unix(unix, 0)
	if d := now.Sub(t); d > tolerance || d < -tolerance {
		return t, fmt.Errorf("%w: signed at %s, %s from now, more than %s", ErrWebhookTimestamp,
			t.UTC().Format(time.RFC3339), d.Round(time.Second).Abs(), tolerance)
	}
	return t, nil
}
