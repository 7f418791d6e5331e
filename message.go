package peakdesk

import (
	"encoding/json"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Priority orders the work: p0 is answered first.
type Priority string

// Priorities, most urgent first.
const (
	// P0 is urgent: after-sale, refunds, payment failures, complaints.
	P0 Priority = "p0"
	// P1 is normal: orders and logistics.
	P1 Priority = "p1"
	// P2 is low: pre-sale and general questions.
	P2 Priority = "p2"
)

// Priorities lists every priority, most urgent first.
var Priorities = []Priority{P0, P1, P2}

// ParsePriority returns the priority named by s, or an invalid_argument error.
func ParsePriority(s string) (Priority, error) {
	switch p := Priority(s); p {
	case P0, P1, P2:
		return p, nil
	}
	return "", FieldError("priority", "priority must be one of p0, p1, p2")
}

// Rank returns 0 for p0, 1 for p1 and 2 for p2; lower is more urgent.
func (p Priority) Rank() int {
	switch p {
	case P0:
		return 0
	case P1:
		return 1
	default:
		return 2
	}
}

// MessageStatus is where a message is on its way to an answer.
type MessageStatus string

// Message statuses.
const (
	StatusQueued     MessageStatus = "queued"
	StatusProcessing MessageStatus = "processing"
	StatusAnswered   MessageStatus = "answered"
	StatusFailed     MessageStatus = "failed"
)

// Limits on what a client may send.
const (
	MaxTextRunes     = 2000
	MaxBodyBytes     = 64 << 10
	MaxMetadataBytes = 4 << 10
)

// Message is one customer chat message as accepted by the ingest edge and
// carried through the queue to a worker.
type Message struct {
	ID             string          `json:"message_id"`
	ShopID         string          `json:"shop"`
	ConversationID string          `json:"conversation_id"`
	UserID         string          `json:"user_id"`
	Text           string          `json:"text"`
	Channel        string          `json:"channel,omitempty"`
	Priority       Priority        `json:"priority"`
	ClientMsgID    string          `json:"client_msg_id,omitempty"`
	Metadata       json.RawMessage `json:"metadata,omitempty"`
	AcceptedAt     time.Time       `json:"accepted_at"`
}

// Reply sources: which step of the graded fallback produced an answer.
const (
	SourceLLM          = "llm"
	SourceLLMSecondary = "llm_secondary"
	SourceFAQ          = "faq"
	SourceHandoff      = "handoff"
	SourceCache        = "cache"
	// SourceFollowUp marks a reply pushed later on a conversation, such as
	// the facts of an order lookup that was too slow for the first answer.
	SourceFollowUp = "followup"
	// SourceAgent marks a reply a human agent wrote (human takeover).
	SourceAgent = "agent"
	// SourceOrder marks an answer from the shop's order data without the
	// LLM: an order's status and parcel, a customer's recent orders, a
	// refund's state (or "checking", when the shop was too slow).
	SourceOrder = "order"
)

// Reply is one answer on a conversation. It answers one or more messages.
type Reply struct {
	ID             string `json:"reply_id"`
	ShopID         string `json:"-"`
	ConversationID string `json:"conversation_id"`
	// UserID is the customer the conversation belongs to. It is not part
	// of the JSON form: reply events are published on the customer's
	// subject (queue.UserEventSubject), which needs it.
	UserID           string   `json:"-"`
	MessageIDs       []string `json:"message_ids"`
	Text             string   `json:"text"`
	Source           string   `json:"source"`
	Model            string   `json:"model,omitempty"`
	PromptTokens     int      `json:"prompt_tokens,omitempty"`
	CompletionTokens int      `json:"completion_tokens,omitempty"`
	// CostMicroUSD is what the answer cost at the LLM provider, in
	// millionths of a US dollar.
	CostMicroUSD int64 `json:"cost_micro_usd,omitempty"`
	// Agent is the name a human agent's reply (source agent) is signed
	// with: the part of a console operator's e-mail before the @, or an
	// API agent's token subject.
	Agent string `json:"agent,omitempty"`
	// FollowUp means a further reply comes on the conversation: this one
	// tells the customer their order is being looked up, and the facts (or
	// a human, should the shop stay down) follow as a reply of their own.
	FollowUp  bool      `json:"follow_up,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// ReplacesPartial tells a client that showed the partial text of a
	// streamed answer that this reply replaces it (the stream broke, or the
	// answer fell back after text was shown). Only the live event carries it.
	ReplacesPartial bool `json:"replaces_partial,omitempty"`
}

// CheckText returns a chat text (a customer's message, an agent's reply)
// trimmed, or an invalid_argument error naming field: 1..MaxTextRunes
// characters of valid UTF-8, no control characters other than newline and
// tab.
func CheckText(field, text string) (string, error) {
	text = strings.TrimSpace(text)
	switch n := utf8.RuneCountInString(text); {
	case n == 0:
		return "", FieldError(field, "%s is required", field)
	case n > MaxTextRunes:
		return "", FieldError(field, "%s must be at most %d characters", field, MaxTextRunes)
	}
	if !utf8.ValidString(text) {
		return "", FieldError(field, "%s must be valid UTF-8", field)
	}
	for _, r := range text {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return "", FieldError(field, "%s must not contain control characters other than newline and tab", field)
		}
	}
	return text, nil
}

// Answers reports whether r answers the message with the given id.
func (r *Reply) Answers(messageID string) bool {
	for _, id := range r.MessageIDs {
		if id == messageID {
			return true
		}
	}
	return false
}

// MessageState is a message as a client sees it: its status and, once
// answered, its reply.
type MessageState struct {
	ID             string        `json:"message_id"`
	ConversationID string        `json:"conversation_id"`
	Priority       Priority      `json:"priority"`
	Status         MessageStatus `json:"status"`
	Text           string        `json:"text,omitempty"`
	CreatedAt      time.Time     `json:"created_at,omitzero"`
	Reply          *Reply        `json:"reply,omitempty"`
}

// Conversation is a chat between one end user and a shop.
type Conversation struct {
	ID     string `json:"conversation_id"`
	ShopID string `json:"-"`
	UserID string `json:"user_id"`
	// Handoff is true while a human owns the conversation (State waiting_human
	// or assigned).
	Handoff bool `json:"handoff"`
	// Takeover says who answers: the bot or a human agent.
	Takeover
	CreatedAt time.Time      `json:"created_at"`
	Messages  []MessageState `json:"messages"`
	// Replies holds every reply in order, including those that answer no
	// single message (follow-ups).
	Replies []Reply `json:"replies"`
}
