package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
)

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
	var b [16]byte
	_, _ = rand.Read(b[:])
	reply := &peakdesk.Reply{ID: hex.EncodeToString(b[:]), ShopID: m.ShopID, ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceFAQ}
	// Message and answer commit together, so no worker sees the message
	// unanswered.
	stored, existed, err := e.cfg.DB.SaveAnsweredMessage(ctx, m, reply, e.cfg.ReplyWebhook)
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
