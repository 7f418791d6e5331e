package queue

import (
	"encoding/json"
	"fmt"

	"github.com/peakdesk/peakdesk"
)

// ConsumerShedWriter is the durable consumer of the shed answers in
// CHAT_IN (subjects chat.shed.<shop>), which the shed writer stores in
// Postgres in batches.
const ConsumerShedWriter = "shed-writer"

// ShedSubject is the CHAT_IN subject of shop's shed answers: a message the
// edge shed and answered from the FAQ, with the answer. It shares CHAT_IN's
// durability and duplicate window with accepted messages, so a message id
// is either queued for the workers or answered at the edge, never both.
func ShedSubject(shop string) string { return "chat.shed." + shop }

// ShedRecord is what the edge publishes for a shed answer: the message, the
// reply the customer got and what the reply promises (an order question's
// order.followup; never money).
type ShedRecord struct {
	Message peakdesk.Message  `json:"message"`
	Reply   peakdesk.Reply    `json:"reply"`
	Actions []peakdesk.Action `json:"actions,omitempty"`
}

// EncodeShed returns the record of message m answered by r, which promises
// actions.
func EncodeShed(m *peakdesk.Message, r *peakdesk.Reply, actions ...peakdesk.Action) ([]byte, error) {
	b, err := json.Marshal(ShedRecord{Message: *m, Reply: *r, Actions: actions})
	if err != nil {
		return nil, fmt.Errorf("queue: encode shed answer: %w", err)
	}
	return b, nil
}

// DecodeShed reads a record EncodeShed wrote. The reply's shop and
// customer, which its JSON form leaves out, are the message's (the customer
// routes the reply's event, see ReplyEventMsg).
func DecodeShed(data []byte) (*ShedRecord, error) {
	var rec ShedRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("queue: decode shed answer: %w", err)
	}
	if rec.Message.ID == "" || rec.Message.ShopID == "" || rec.Reply.ID == "" {
		return nil, fmt.Errorf("queue: decode shed answer: message id, shop and reply id are required")
	}
	rec.Reply.ShopID = rec.Message.ShopID
	rec.Reply.UserID = rec.Message.UserID
	return &rec, nil
}
