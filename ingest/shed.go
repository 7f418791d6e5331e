package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// answerFromFAQ answers a shed message from the shop's FAQ, if the FAQ is
// confident. The message and its reply are stored and the reply event is
// published like any other, so polling and SSE see the answer too. It
// returns nil when there is no confident answer or storing fails (the
// caller then sheds with 429).
func (e *Edge) answerFromFAQ(ctx context.Context, m *peakdesk.Message) *peakdesk.Reply {
	if e.cfg.FAQ == nil {
		return nil
	}
	text, ok := e.cfg.FAQ.Answer(ctx, m.ShopID, m.Text)
	if !ok {
		return nil
	}
	existing, err := e.cfg.DB.BeginMessage(ctx, m)
	if err != nil {
		e.log.WarnContext(ctx, "storing a shed message failed", "trace_id", traceOf(ctx).id, "err", err)
		return nil
	}
	if existing != nil { // an idempotent repeat of a message already answered
		return existing
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	reply := &peakdesk.Reply{ID: hex.EncodeToString(b[:]), ShopID: m.ShopID, ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceFAQ}
	if err := e.cfg.DB.SaveReply(ctx, reply); err != nil {
		if r, err := e.cfg.DB.ReplyFor(ctx, m.ShopID, m.ID); err == nil {
			return r
		}
		e.log.WarnContext(ctx, "storing a shed answer failed", "trace_id", traceOf(ctx).id, "err", err)
		return nil
	}
	data, _ := json.Marshal(reply)
	msg := nats.NewMsg(storage.EventSubject(m.ShopID, m.ConversationID))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, reply.ID)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := e.cfg.JS.PublishMsg(pctx, msg); err != nil {
		// The answer is stored and returned inline; only SSE misses it.
		e.log.WarnContext(ctx, "publishing a shed answer's event failed", "trace_id", traceOf(ctx).id, "err", err)
	}
	return reply
}
