package peakdesk

import (
	"encoding/json"
	"strconv"
	"time"
)

// ActionKind names what an outbox action does at the shop.
type ActionKind string

// Action kinds.
const (
	// ActionCouponIssue issues a coupon (POST /coupons at the shop API).
	ActionCouponIssue ActionKind = "coupon.issue"
	// ActionRefundRequest requests a refund (POST /refunds).
	ActionRefundRequest ActionKind = "refund.request"
	// ActionWebhookDeliver delivers a reply to the shop's webhook URL.
	ActionWebhookDeliver ActionKind = "webhook.deliver"
	// ActionOrderFollowUp retries an order lookup that was too slow for the
	// first reply and pushes a second reply when it succeeds.
	ActionOrderFollowUp ActionKind = "order.followup"
)

// ActionKinds lists every action kind.
var ActionKinds = []ActionKind{ActionCouponIssue, ActionRefundRequest, ActionWebhookDeliver, ActionOrderFollowUp}

// ParseActionKind returns the kind named by s, or an invalid_argument error
// naming field.
func ParseActionKind(field, s string) (ActionKind, error) {
	for _, k := range ActionKinds {
		if string(k) == s {
			return k, nil
		}
	}
	return "", FieldError(field, "%s must be one of coupon.issue, refund.request, webhook.deliver, order.followup", field)
}

// ActionState is where an outbox action is on its way to the shop.
type ActionState string

// Action states. Succeeded, dead and canceled are final for the relay; only
// an operator moves an action out of dead or canceled.
const (
	ActionPending   ActionState = "pending"
	ActionRunning   ActionState = "running"
	ActionRetrying  ActionState = "retrying"
	ActionSucceeded ActionState = "succeeded"
	ActionDead      ActionState = "dead"
	ActionCanceled  ActionState = "canceled"
)

// ActionStates lists every action state.
var ActionStates = []ActionState{ActionPending, ActionRunning, ActionRetrying, ActionSucceeded, ActionDead, ActionCanceled}

// ParseActionState returns the state named by s, or an invalid_argument
// error naming field.
func ParseActionState(field, s string) (ActionState, error) {
	for _, st := range ActionStates {
		if string(st) == s {
			return st, nil
		}
	}
	return "", FieldError(field, "%s must be one of pending, running, retrying, succeeded, dead, canceled", field)
}

// Action is one side effect promised to a customer (a coupon, a refund, a
// follow-up answer) or owed to a shop (a reply webhook). It is written in the
// same transaction as the reply that promises it and carried out by the
// outbox relay, exactly once at the shop thanks to its idempotency key.
type Action struct {
	ID             int64  `json:"action_id"`
	ShopID         string `json:"shop"`
	ConversationID string `json:"conversation_id,omitempty"`
	// ReplyID is the reply that promised the action, when known.
	ReplyID string `json:"reply_id,omitempty"`
	// Trace is the W3C traceparent of the message whose reply promised the
	// action (empty when unknown): the relay's calls to the shop continue
	// its trace.
	Trace string `json:"trace,omitempty"`
	// GrantID is the money grant a coupon or refund carries out (taken by
	// the tool that promised it); the reply's transaction confirms it.
	GrantID int64           `json:"grant_id,omitempty"`
	Kind    ActionKind      `json:"kind"`
	Payload json.RawMessage `json:"payload"`
	// IdempotencyKey is unique across all actions and never changes.
	IdempotencyKey string `json:"idempotency_key"`
	// KeyGeneration counts operator retries of an action the shop had
	// rejected (4xx): the shop stores its rejection under the key, so such a
	// retry must use a fresh one. See AttemptKey.
	KeyGeneration int         `json:"key_generation"`
	State         ActionState `json:"state"`
	// Attempts counts every attempt ever started; attempt rows are numbered
	// 1..Attempts.
	Attempts int `json:"attempts"`
	// RunAttempts counts the attempts since the action was created or last
	// retried by an operator; at MaxAttempts a failing action is dead.
	RunAttempts    int       `json:"run_attempts"`
	MaxAttempts    int       `json:"max_attempts"`
	NextAttemptAt  time.Time `json:"next_attempt_at"`
	LeaseOwner     string    `json:"lease_owner,omitempty"`
	LeaseExpiresAt time.Time `json:"lease_expires_at,omitzero"`
	LastError      string    `json:"last_error,omitempty"`
	LastHTTPStatus int       `json:"last_http_status,omitempty"`
	// Rejected is true when the shop answered the current key with a final
	// refusal (4xx): nothing was applied under it.
	Rejected bool `json:"rejected,omitempty"`
	// Result is the shop's answer to the successful attempt, when JSON.
	Result      json.RawMessage `json:"result,omitempty"`
	CreatedAt   time.Time       `json:"created_at,omitzero"`
	UpdatedAt   time.Time       `json:"updated_at,omitzero"`
	CompletedAt time.Time       `json:"completed_at,omitzero"`
}

// AttemptKey is the Idempotency-Key sent to the shop: the action's key, with
// a generation suffix after an operator retried a rejected action.
func (a *Action) AttemptKey() string {
	if a.KeyGeneration == 0 {
		return a.IdempotencyKey
	}
	return a.IdempotencyKey + "-g" + strconv.Itoa(a.KeyGeneration)
}

// Final reports whether the relay is done with the action.
func (s ActionState) Final() bool {
	return s == ActionSucceeded || s == ActionDead || s == ActionCanceled
}

// ActionAttempt is one try of an action against the shop.
type ActionAttempt struct {
	ActionID int64 `json:"action_id"`
	// N numbers the attempts of an action from 1.
	N     int    `json:"n"`
	Relay string `json:"relay"`
	// Key is the Idempotency-Key the attempt sent.
	Key       string    `json:"idempotency_key"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
	// Outcome is empty while the attempt runs, then one of the Attempt*
	// outcomes.
	Outcome         string `json:"outcome,omitempty"`
	HTTPStatus      int    `json:"http_status,omitempty"`
	Error           string `json:"error,omitempty"`
	ResponseExcerpt string `json:"response_excerpt,omitempty"`
}

// Attempt outcomes.
const (
	// AttemptSucceeded: the shop applied (or had applied) the action.
	AttemptSucceeded = "succeeded"
	// AttemptFailed: a transient failure (network, timeout, 408/409/429/5xx).
	AttemptFailed = "failed"
	// AttemptRejected: a final refusal (other 4xx); the action is dead.
	AttemptRejected = "rejected"
	// AttemptAborted: the relay stopped before the answer came.
	AttemptAborted = "aborted"
	// AttemptAbandoned: the relay holding the lease vanished; another
	// relay re-claimed the action after the lease expired.
	AttemptAbandoned = "abandoned"
)
