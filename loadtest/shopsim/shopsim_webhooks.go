package shopsim

import (
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/peakdesk/peakdesk/outbox/shopapi"
)

// ShopEventIDHeader carries a reply-webhook delivery's event id.
const EventIDHeader = shopapi.EventIDHeader

// Why the simulated shop refused a webhook delivery (Webhook.Refused).
const (
	WebhookBadSignature = "bad_signature"
	WebhookStale        = "timestamp_out_of_tolerance"
	WebhookReplayed     = "replayed_signature"
)

// shopSeenSig is an accepted signature, remembered until it expires.
type shopSeenSig struct {
	sig     string
	expires time.Time
}

// postWebhook serves POST /webhooks/replies as a careful shop would, with
// outbox.VerifyWebhook:
//   - a missing or wrong Peakdesk-Signature: 401 bad_signature;
//   - a signature time more than 5 minutes from the shop's clock:
//     400 timestamp_out_of_tolerance;
//   - a signature accepted before (a captured request sent again):
//     409 replayed_signature. 409 because peakdesk's relay retries it: a
//     relay only repeats a signature when it retries within the same second,
//     and its next attempt, signed anew, is then accepted as a duplicate;
//   - otherwise 200 {"received":true,"duplicate":…}. Duplicates (the same
//     event id, or idempotency key without one) are acknowledged without a
//     second effect: retries are signed anew, so exactly-once effects rest
//     on the event id, replay protection on the signature.
//
// Without a secret nothing is checked and signatures are only recorded.
func (s *Sim) postWebhook(w http.ResponseWriter, r *http.Request) {
	f := s.Faults()
	if s.injectDown(w, f) {
		return
	}
	if shopDelay(r.Context(), f) != nil {
		return
	}
	if s.injectError(w, f) {
		return
	}
	if f.ValidationFail {
		s.countFault()
		shopWriteError(w, http.StatusUnprocessableEntity, "validation_failed", "the shop rejected the webhook (simulated)", "")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, shopMaxWebhookBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			shopWriteError(w, http.StatusRequestEntityTooLarge, "payload_too_large", "body too large", "")
		}
		return
	}

	now := time.Now()
	wh := Webhook{
		Shop:             shopOf(r),
		EventID:          r.Header.Get(EventIDHeader),
		IdempotencyKey:   r.Header.Get("Idempotency-Key"),
		Signature:        r.Header.Get(shopapi.SignatureHeader),
		SignatureChecked: len(s.secret) > 0,
		Body:             body,
		At:               now,
	}
	if !json.Valid(body) {
		wh.Body, _ = json.Marshal(string(body))
	}
	var signedAt time.Time
	var verr error
	if wh.SignatureChecked {
		signedAt, verr = shopapi.VerifyWebhook(s.secret, wh.Signature, body, now, shopapi.WebhookTolerance)
		wh.SignatureValid = verr == nil || errors.Is(verr, shopapi.ErrWebhookTimestamp)
	}

	s.mu.Lock()
	status, code, msg := http.StatusOK, "", ""
	switch {
	case errors.Is(verr, shopapi.ErrWebhookTimestamp):
		s.stats.WebhookStale++
		status, code, msg = http.StatusBadRequest, WebhookStale, verr.Error()
	case verr != nil:
		s.stats.WebhookBadSignatures++
		status, code, msg = http.StatusUnauthorized, WebhookBadSignature, verr.Error()
	case wh.SignatureChecked && s.seenSignature(shopapi.SignWebhook(s.secret, body, signedAt), signedAt, now):
		s.stats.WebhookReplays++
		status, code, msg = http.StatusConflict, WebhookReplayed,
			"this signature was accepted before; every delivery must be signed anew"
	}
	if status != http.StatusOK {
		wh.Refused = code
		s.webhooks = append(s.webhooks, wh)
		s.mu.Unlock()
		shopWriteError(w, status, code, msg, shopapi.SignatureHeader)
		return
	}
	if dedup := cmp.Or(wh.EventID, wh.IdempotencyKey); dedup != "" {
		k := shopKey{wh.Shop, dedup}
		wh.Duplicate = s.webhookSeen[k]
		s.webhookSeen[k] = true
	}
	if wh.Duplicate {
		s.stats.WebhookDuplicates++
	} else {
		s.stats.WebhooksReceived++
	}
	s.webhooks = append(s.webhooks, wh)
	s.mu.Unlock()
	shopWriteJSON(w, http.StatusOK, map[string]bool{"received": true, "duplicate": wh.Duplicate})
}

// seenSignature reports whether sig was accepted before and otherwise
// remembers it until it could no longer pass the timestamp check. s.mu is
// held.
func (s *Sim) seenSignature(sig string, signedAt, now time.Time) bool {
	// Forget what has expired; the queue is in arrival order, and an entry
	// kept a little long (behind a later expiry) does no harm.
	for len(s.sigQueue) > 0 && s.sigQueue[0].expires.Before(now) {
		delete(s.sigSeen, s.sigQueue[0].sig)
		s.sigQueue = s.sigQueue[1:]
	}
	if s.sigSeen[sig] {
		return true
	}
	s.sigSeen[sig] = true
	s.sigQueue = append(s.sigQueue, shopSeenSig{sig: sig, expires: signedAt.Add(shopapi.WebhookTolerance)})
	return false
}
