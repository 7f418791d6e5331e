package outbox

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// Default attempt budgets. With the relay's default steps (15 s, and 5 s for
// follow-ups) a shop may be down for about 75 minutes before a coupon,
// refund or webhook is dead, and a follow-up hands the customer to a human
// after about 4 minutes (its attempts at 0, 5, 15, 30, … 225 s): a shop
// down for the 2 minutes of a midnight spike still answers its customers.
const (
	DefaultMaxAttempts         = 25
	DefaultFollowUpMaxAttempts = 10
)

// CouponPayload is the payload of a coupon.issue action.
type CouponPayload struct {
	OrderID     string `json:"order_id,omitempty"`
	UserID      string `json:"user_id"`
	AmountCents int64  `json:"amount_cents"`
	Reason      string `json:"reason"`
}

// RefundPayload is the payload of a refund.request action. AmountCents is
// always set (the whole order when the customer named no amount), so every
// retry sends the same request.
type RefundPayload struct {
	OrderID     string `json:"order_id"`
	UserID      string `json:"user_id"`
	AmountCents int64  `json:"amount_cents"`
	Reason      string `json:"reason"`
}

// FollowUpPayload is the payload of an order.followup action: the order
// question to answer once the shop does.
type FollowUpPayload struct {
	// OrderID or TrackingNo is the number the customer gave; neither: the
	// customer's recent orders answer.
	OrderID    string `json:"order_id"`
	TrackingNo string `json:"tracking_no,omitempty"`
	// Topic is TopicOrder (empty too) or TopicRefund.
	Topic     string `json:"topic,omitempty"`
	UserID    string `json:"user_id"`
	MessageID string `json:"message_id,omitempty"`
	// Lang is the customer's language, for the texts pushed later (empty:
	// texts.DefaultLang).
	Lang texts.Lang `json:"lang,omitempty"`
	// AskedAt is when the customer asked, for the time to the final answer.
	AskedAt time.Time `json:"asked_at,omitzero"`
}

// question is the order question the follow-up answers.
func (p FollowUpPayload) question() OrderQuestion {
	return OrderQuestion{Topic: cmp.Or(p.Topic, TopicOrder), OrderID: p.OrderID, TrackingNo: p.TrackingNo}
}

// WebhookEvent is the body of a reply webhook, and the payload of its
// webhook.deliver action.
type WebhookEvent struct {
	// EventID is the same on every retry; receivers deduplicate by it.
	EventID        string          `json:"event_id"`
	Type           string          `json:"type"`
	Shop           string          `json:"shop"`
	ConversationID string          `json:"conversation_id"`
	Reply          *peakdesk.Reply `json:"reply"`
	CreatedAt      time.Time       `json:"created_at"`
}

// EventReplyCreated is the type of a reply webhook event.
const EventReplyCreated = "reply.created"

// ReplyWebhook returns the webhook.deliver action for reply r. Insert it in
// the reply's transaction with storage.InsertReplyWebhook, which skips shops
// without a webhook URL. Its idempotency key, and so the event id, derives
// from the reply id: building it twice gives the same action.
func ReplyWebhook(r *peakdesk.Reply) (peakdesk.Action, error) {
	if r == nil || r.ID == "" || r.ShopID == "" {
		return peakdesk.Action{}, errors.New("outbox: reply webhook: reply id and shop are required")
	}
	key := actionKey(peakdesk.ActionWebhookDeliver, r.ShopID, r.ID)
	ev := WebhookEvent{EventID: key, Type: EventReplyCreated, Shop: r.ShopID, ConversationID: r.ConversationID,
		Reply: r, CreatedAt: r.CreatedAt}
	payload, err := json.Marshal(ev)
	if err != nil {
		return peakdesk.Action{}, fmt.Errorf("outbox: reply webhook: %w", err)
	}
	return peakdesk.Action{
		ShopID: r.ShopID, ConversationID: r.ConversationID, ReplyID: r.ID,
		Kind: peakdesk.ActionWebhookDeliver, Payload: payload, IdempotencyKey: key,
		MaxAttempts: DefaultMaxAttempts,
	}, nil
}

// actionKey derives an idempotency key from what identifies an action, so
// that the same promise made twice (a repeated tool call, a rebuilt webhook)
// is one action. Without identifying parts it is random.
func actionKey(kind peakdesk.ActionKind, shop string, parts ...string) string {
	var sum []byte
	if len(parts) == 0 || parts[0] == "" {
		var b [20]byte
		_, _ = rand.Read(b[:])
		sum = b[:]
	} else {
		h := sha256.Sum256([]byte(string(kind) + "\x00" + shop + "\x00" + strings.Join(parts, "\x00")))
		sum = h[:20]
	}
	prefix := map[peakdesk.ActionKind]string{
		peakdesk.ActionCouponIssue:    "cpn",
		peakdesk.ActionRefundRequest:  "rfd",
		peakdesk.ActionWebhookDeliver: "whk",
		peakdesk.ActionOrderFollowUp:  "ord",
	}[kind]
	return "pd_" + prefix + "_" + hex.EncodeToString(sum)
}

func newAction(kind peakdesk.ActionKind, shop, conv string, maxAttempts int, payload any, keyParts ...string) (peakdesk.Action, error) {
	b, err := json.Marshal(payload)
	if err != nil {
		return peakdesk.Action{}, fmt.Errorf("outbox: %s payload: %w", kind, err)
	}
	return peakdesk.Action{
		ShopID: shop, ConversationID: conv, Kind: kind, Payload: b,
		IdempotencyKey: actionKey(kind, shop, keyParts...), MaxAttempts: maxAttempts,
	}, nil
}
