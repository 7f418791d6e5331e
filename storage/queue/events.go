package queue

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
)

// PublishReplyEvent publishes r to CHAT_EVENTS on its conversation's
// subject, after r is committed in Postgres. The reply id is the Nats-Msg-Id,
// so a re-publish within the stream's duplicate window is a no-op.
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

// ReplyEventMsg returns the CHAT_EVENTS message of reply r, for a caller
// that publishes many asynchronously.
func ReplyEventMsg(r *peakdesk.Reply) (*nats.Msg, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("queue: encode reply event: %w", err)
	}
	msg := nats.NewMsg(EventSubject(r.ShopID, r.ConversationID))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, r.ID)
	return msg, nil
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
