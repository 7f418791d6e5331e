package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/retention"
)

// replyPusher stores and publishes replies that answer no single message:
// the second reply of an order follow-up, and the notice that a human takes
// over when a follow-up is given up (docs/architecture.md).
type replyPusher struct {
	db *storage.DB
	js jetstream.JetStream
}

// derivedID names a pushed reply after the action that caused it, so a
// relay that dies and repeats the hook stores the reply once.
func derivedID(kind, key string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + key))
	return hex.EncodeToString(sum[:16])
}

func (p replyPusher) followUp(ctx context.Context, a peakdesk.Action, r outbox.FollowUpResult) error {
	return p.push(ctx, &peakdesk.Reply{ID: derivedID("followup", a.IdempotencyKey), ShopID: a.ShopID,
		ConversationID: a.ConversationID, Text: r.Text, Source: peakdesk.SourceFollowUp}, false)
}

func (p replyPusher) handoff(ctx context.Context, a peakdesk.Action, text, _ string) error {
	return p.push(ctx, &peakdesk.Reply{ID: derivedID("handoff", a.IdempotencyKey), ShopID: a.ShopID,
		ConversationID: a.ConversationID, Text: text, Source: peakdesk.SourceHandoff}, true)
}

func (p replyPusher) push(ctx context.Context, r *peakdesk.Reply, handoff bool) error {
	if r.ConversationID == "" {
		return fmt.Errorf("push reply: action names no conversation")
	}
	if _, err := p.db.SaveFollowUp(ctx, r, outbox.ReplyWebhook, handoff); err != nil {
		return err
	}
	// Stored (now or by an earlier try): publish, which dedupes by reply id.
	return queue.PublishReplyEvent(ctx, p.js, r)
}

// startRelay starts the outbox relay role, with the retention job, and
// mounts the operator actions API. The shop API is the configured one, or in
// dev the simulator.
func (p *Program) startRelay(ctx context.Context) error {
	pusher := replyPusher{db: p.db, js: p.js}
	var err error
	p.relay, err = outbox.NewRelay(outbox.Config{
		DB: p.db, Shop: p.shop,
		OnFollowUp: pusher.followUp, OnHandoff: pusher.handoff,
		Lookups: p.orders.lookups, Texts: p.orders.texts, FollowUpStep: p.Config.FollowUpStep,
		Logger: p.Log, Registerer: p.registry,
		Concurrency: p.Config.RelayConcurrency,
		SoftStop:    p.Config.SoftStop,
	})
	if err != nil {
		return err
	}
	if err := p.relay.Start(ctx); err != nil {
		return err
	}
	// Expired chat texts are masked by every relay (they share the work).
	if p.redactor, err = retention.New(retention.Config{DB: p.db, Logger: p.Log, Registerer: p.registry}); err != nil {
		return err
	}
	if err := p.redactor.Start(ctx); err != nil {
		return err
	}
	if err := p.startWaitNotifier(ctx); err != nil {
		return err
	}
	return nil
}
