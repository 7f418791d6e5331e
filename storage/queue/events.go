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
