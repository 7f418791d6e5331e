package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// answerOrderShed answers a shed order question: "checking" now, and an
// order.followup that the relays carry out (coalesced shop lookups, no LLM,
// no queue) pushes the facts on the conversation. The edge never waits on
// the shop, and the customer does not wait behind the backlog that made the
// edge shed. It returns nil when m is not an order question or storing
// fails (the caller goes on shedding).
func (e *Edge) answerOrderShed(ctx context.Context, m *peakdesk.Message) *peakdesk.Reply {
	if e.cfg.Orders == nil || e.cfg.ReplyWebhook == nil {
		return nil
	}
	text, actions, ok, err := e.cfg.Orders.ShedOrder(ctx, m)
	if err != nil {
		e.log.WarnContext(ctx, "a shed order question could not be followed up", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
	}
	if !ok || err != nil {
		return nil
	}
	reply := &peakdesk.Reply{ID: newReplyID(), ShopID: m.ShopID, ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceOrder, FollowUp: true}
	return e.storeShedAnswer(ctx, m, reply, actions...)
}

// answerFromFAQ answers a shed message from the shop's FAQ, if the FAQ is
// confident. The message and its reply are stored and the reply event is
// published like any other, so polling and SSE see the answer too. It
// returns nil when there is no confident answer or storing fails (the
// caller then sheds with 429).
func (e *Edge) answerFromFAQ(ctx context.Context, m *peakdesk.Message) *peakdesk.Reply {
	if e.cfg.FAQ == nil || e.cfg.ReplyWebhook == nil {
		return nil
	}
	text, ok := e.cfg.FAQ.Answer(ctx, m.ShopID, m.Text)
	if !ok {
		return nil
	}
	reply := &peakdesk.Reply{ID: newReplyID(), ShopID: m.ShopID, ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceFAQ}
	return e.storeShedAnswer(ctx, m, reply)
}

func newReplyID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// storeShedAnswer stores m answered by reply (with the actions it
// promises) and publishes the reply's event; nil when storing fails.
func (e *Edge) storeShedAnswer(ctx context.Context, m *peakdesk.Message, reply *peakdesk.Reply, actions ...peakdesk.Action) *peakdesk.Reply {
	// Message and answer commit together, so no worker sees the message
	// unanswered.
	stored, existed, err := e.cfg.DB.SaveAnsweredMessage(ctx, m, reply, e.cfg.ReplyWebhook, actions...)
	switch {
	case err != nil:
		e.log.WarnContext(ctx, "storing a shed answer failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
		return nil
	case existed:
		return stored // an idempotent repeat: its answer, or nil while it is still queued
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := queue.PublishReplyEvent(pctx, e.cfg.JS, stored); err != nil {
		// The answer is stored and returned inline; only SSE misses it.
		e.log.WarnContext(ctx, "publishing a shed answer's event failed", "trace_id", peakdesk.TraceFrom(ctx).ID, "err", err)
	}
	return stored
}
