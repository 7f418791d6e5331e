package queue

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
)

// Reply events: one CHAT_EVENTS subject per customer.
//
// Every reply event of a customer is published on the customer's subject,
// chat.events.<shop>.u.<user token>, with the conversation and the customer
// in headers. One subject per customer, not one per conversation, because
// both ways of reading events are then a direct get by a literal subject,
// which JetStream answers from its per-subject index: a customer's stream
// (GET /v1/events) replays its subject from Last-Event-ID, and a
// conversation's stream replays its owner's subject and skips the owner's
// other conversations (a customer has a handful). A subject per
// conversation would make the customer's replay a wildcard filter, which
// the server answers by walking message blocks once a stream holds more
// than 64K subjects — at midnight it does. The subject count stays one per
// active customer (fewer than conversations), and no event is stored twice.
//
// Events published before per-customer subjects were on
// chat.events.<shop>.<conversation> (LegacyEventSubject); CHAT_EVENTS keeps
// them for its max age, and the edge still reads them for conversation
// streams while any are left.
const (
	// HeaderConversation names the conversation of a reply event or
	// partial reply.
	HeaderConversation = "Peakdesk-Conversation"
	// HeaderUser names the customer of a reply event or partial reply
	// (readers check it: user tokens are hashes).
	HeaderUser = "Peakdesk-User"
)

// EventsFilter matches every reply event in CHAT_EVENTS; PartialsFilter
// every partial reply on core NATS.
const (
	EventsFilter   = "chat.events.>"
	PartialsFilter = "chat.partial.>"
)

// UserToken is the subject token of customer user of shop: 22 base64url
// characters of a hash, since a user id may hold characters a subject
// cannot (and need not show in subjects).
func UserToken(shop, user string) string {
	h := sha256.New()
	for _, part := range []string{"peakdesk user events v1", shop, user} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16])
}

// UserEventSubject is the CHAT_EVENTS subject of every reply event of
// customer user of shop.
func UserEventSubject(shop, user string) string {
	return "chat.events." + shop + ".u." + UserToken(shop, user)
}

// LegacyEventSubject is the subject a conversation's reply events had
// before per-customer subjects; only readers use it.
func LegacyEventSubject(shop, conv string) string {
	return "chat.events." + shop + "." + conv
}

// PartialSubject is the core NATS subject of the partial replies (text of an
// answer being streamed, so far) of customer user of shop. No stream
// captures it; a client not listening misses nothing, the reply event
// follows.
func PartialSubject(shop, user string) string {
	return "chat.partial." + shop + ".u." + UserToken(shop, user)
}

// ReplyEventMsg returns the CHAT_EVENTS message of reply r: on its
// customer's subject, with its conversation and customer in headers and its
// id as the Nats-Msg-Id, so a re-publish within the stream's duplicate
// window is a no-op. r.UserID is required.
func ReplyEventMsg(r *peakdesk.Reply) (*nats.Msg, error) {
	if r.ShopID == "" || r.UserID == "" || r.ConversationID == "" {
		return nil, errors.New("queue: reply event: the reply names no shop, customer (UserID) or conversation")
	}
	data, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("queue: encode reply event: %w", err)
	}
	msg := nats.NewMsg(UserEventSubject(r.ShopID, r.UserID))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, r.ID)
	msg.Header.Set(HeaderConversation, r.ConversationID)
	msg.Header.Set(HeaderUser, r.UserID)
	return msg, nil
}

// PublishReplyEvent publishes r to CHAT_EVENTS (see ReplyEventMsg), after r
// is committed in Postgres.
func PublishReplyEvent(ctx context.Context, js jetstream.JetStream, r *peakdesk.Reply) error {
	msg, err := ReplyEventMsg(r)
	if err != nil {
		return err
	}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("queue: publish reply event: %w", err)
	}
	return nil
}

// PartialMsg returns the core NATS message of a partial reply on
// conversation conv of customer user of shop.
func PartialMsg(shop, user, conv string, data []byte) *nats.Msg {
	msg := nats.NewMsg(PartialSubject(shop, user))
	msg.Data = data
	msg.Header.Set(HeaderConversation, conv)
	msg.Header.Set(HeaderUser, user)
	return msg
}

// EventRoute is whom a reply event or partial reply is for.
type EventRoute struct {
	Shop string
	// User is the customer; "" for a legacy event, which names only its
	// conversation.
	User         string
	Conversation string
}

// RouteOf reads the route of a reply event or partial reply from its
// subject and headers; ok is false for a message that is neither.
func RouteOf(subject string, h nats.Header) (EventRoute, bool) {
	var rest string
	switch {
	case strings.HasPrefix(subject, "chat.events."):
		rest = subject[len("chat.events."):]
	case strings.HasPrefix(subject, "chat.partial."):
		rest = subject[len("chat.partial."):]
	default:
		return EventRoute{}, false
	}
	shop, tail, _ := strings.Cut(rest, ".")
	if shop == "" || tail == "" {
		return EventRoute{}, false
	}
	if tok, ok := strings.CutPrefix(tail, "u."); ok {
		rt := EventRoute{Shop: shop, User: h.Get(HeaderUser), Conversation: h.Get(HeaderConversation)}
		if rt.User == "" || rt.Conversation == "" || UserToken(shop, rt.User) != tok {
			return EventRoute{}, false
		}
		return rt, true
	}
	if strings.Contains(tail, ".") {
		return EventRoute{}, false
	}
	return EventRoute{Shop: shop, Conversation: tail}, true
}

// NextReplyEvent returns the first reply event after sequence after of
// customer user of shop — of conversation conv only, unless conv is "" —
// by direct gets on the customer's subject. It returns
// jetstream.ErrMsgNotFound when there is none.
func NextReplyEvent(ctx context.Context, s jetstream.Stream, shop, user, conv string, after uint64) (*jetstream.RawStreamMsg, error) {
	subject := UserEventSubject(shop, user)
	for {
		msg, err := s.GetMsg(ctx, after+1, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			return nil, err
		}
		if msg.Header.Get(HeaderUser) == user && (conv == "" || msg.Header.Get(HeaderConversation) == conv) {
			return msg, nil
		}
		after = msg.Sequence
	}
}

// DeskSubject is the core NATS subject on which a conversation's customer
// messages stored for a human agent are announced live (human takeover).
// It is not a stream: the durable records are the message in Postgres and
// its message.created webhook; this only lets an agent's open event stream
// show the message at once.
func DeskSubject(shop, conv string) string {
	return "chat.desk." + shop + "." + conv
}

// PublishDeskMessage announces m, a customer message of shop stored while a
// human owns its conversation, to the agents following the conversation's
// events. Best effort (core NATS, at most once).
func PublishDeskMessage(nc *nats.Conn, shop string, m *peakdesk.MessageState) error {
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("queue: encode desk message: %w", err)
	}
	if err := nc.Publish(DeskSubject(shop, m.ConversationID), data); err != nil {
		return fmt.Errorf("queue: publish desk message: %w", err)
	}
	return nil
}

// ConversationEvents returns the reply events of conversation conv of
// shop, oldest first, by walking the shop's events in CHAT_EVENTS: for
// tests and tools (event streams read a customer's subject instead).
func ConversationEvents(ctx context.Context, s jetstream.Stream, shop, conv string) ([]*jetstream.RawStreamMsg, error) {
	var out []*jetstream.RawStreamMsg
	for after := uint64(0); ; {
		msg, err := s.GetMsg(ctx, after+1, jetstream.WithGetMsgSubject("chat.events."+shop+".>"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if rt, ok := RouteOf(msg.Subject, msg.Header); ok && rt.Conversation == conv {
			out = append(out, msg)
		}
		after = msg.Sequence
	}
}
