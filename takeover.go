package peakdesk

import "time"

// Human takeover (docs/architecture.md). A conversation is answered by the bot
// until something hands it over to a human agent; then it waits for an
// agent, is assigned to the one who claims it, and is resolved (or handed
// back to the bot). While a human owns it the bot says nothing.
//
//	bot ──handoff──▶ waiting_human ──claim──▶ assigned ──resolve──▶ resolved
//	 ▲                   │    ▲                  │                     │
//	 └────hand back──────┘    └── (no way back)  └──hand back──▶ bot ◀─┘ the customer's next message

// ConversationState is who answers a conversation.
type ConversationState string

// Conversation states.
const (
	// StateBot: the bot answers.
	StateBot ConversationState = "bot"
	// StateWaitingHuman: handed off; waiting for an agent to claim it. The
	// bot is silent.
	StateWaitingHuman ConversationState = "waiting_human"
	// StateAssigned: one agent owns it and answers. The bot is silent.
	StateAssigned ConversationState = "assigned"
	// StateResolved: the agent is done; the bot answers the customer's
	// next message (which makes it bot again).
	StateResolved ConversationState = "resolved"
)

// HumanOwned reports whether a human owns the conversation, so the bot must
// stay silent: waiting for an agent or assigned to one.
func (s ConversationState) HumanOwned() bool {
	return s == StateWaitingHuman || s == StateAssigned
}

// Why a conversation was handed to a human (Takeover.Reason).
const (
	// HandoffCustomerAsked: the customer asked for a human (人工, human, …).
	HandoffCustomerAsked = "customer_asked"
	// HandoffTool: the LLM called handoff_to_human.
	HandoffTool = "tool"
	// HandoffPolicy: a money policy refused a promise and handed over (a
	// coupon budget used up, …).
	HandoffPolicy = "policy"
	// HandoffFallback: neither the models nor the FAQ could answer (the
	// LLM down, a spend cap reached): the handoff reply.
	HandoffFallback = "fallback"
	// HandoffOrderLookup: an order follow-up ran out of attempts.
	HandoffOrderLookup = "order_lookup"
	// HandoffDeadLetter: a message used up its deliveries.
	HandoffDeadLetter = "dead_letter"
	// HandoffAgentTakeover: an agent claimed a conversation the bot had.
	HandoffAgentTakeover = "agent_takeover"
)

// Takeover is a conversation's human-takeover state.
type Takeover struct {
	State ConversationState `json:"state"`
	// Agent is who owns an assigned conversation (a console operator's
	// e-mail or an API token's subject), and after it is resolved who
	// resolved it; empty otherwise.
	Agent string `json:"agent,omitempty"`
	// Reason says why it was last handed to a human (Handoff*).
	Reason string `json:"handoff_reason,omitempty"`
	// Priority is the most urgent priority of what the customer is waiting
	// with: agents take p0 first.
	Priority Priority `json:"waiting_priority,omitempty"`
	// WaitingSince is when it was last handed to a human.
	WaitingSince time.Time `json:"waiting_since,omitzero"`
	// AssignedAt is when an agent last claimed it.
	AssignedAt time.Time `json:"assigned_at,omitzero"`
	// ResolvedAt is when it was last resolved.
	ResolvedAt time.Time `json:"resolved_at,omitzero"`
}

// DeskConversation is a conversation as agents and desk webhooks see it:
// who the customer is and who answers.
type DeskConversation struct {
	ConversationID string `json:"conversation_id"`
	ShopID         string `json:"-"`
	UserID         string `json:"user_id"`
	Takeover
}

// Desk events: webhook event types of human takeover, delivered to the
// shop's webhook URL like reply.created (signed, through the outbox).
const (
	// EventConversationHandoff: the conversation waits for a human agent.
	EventConversationHandoff = "conversation.handoff"
	// EventConversationAssigned: an agent claimed it.
	EventConversationAssigned = "conversation.assigned"
	// EventConversationResolved: the agent resolved it.
	EventConversationResolved = "conversation.resolved"
	// EventConversationHandback: an agent gave it back to the bot.
	EventConversationHandback = "conversation.handback"
	// EventMessageCreated: a customer message a human must answer (stored
	// while a human owns the conversation, or pending when it was handed
	// over).
	EventMessageCreated = "message.created"
)

// DeskEvent is the body of a desk webhook. The envelope (event_id, type,
// shop, conversation_id, created_at) is that of reply.created.
type DeskEvent struct {
	// EventID is the same on every retry; receivers deduplicate by it.
	EventID        string `json:"event_id"`
	Type           string `json:"type"`
	Shop           string `json:"shop"`
	ConversationID string `json:"conversation_id"`
	// Conversation is the conversation's state after the event.
	Conversation *DeskConversation `json:"conversation,omitempty"`
	// Message is the customer message of message.created.
	Message   *MessageState `json:"message,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
}
