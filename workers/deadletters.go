package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// Dead letters. When a CHAT_IN message reaches MaxDeliver, the server
// publishes a max-deliveries advisory; the CHAT_ADVISORIES stream keeps it
// until a worker has:
//
//  1. recorded the death in Postgres (message status failed, a dlq_entries
//     row with the reason and the message's last error, the conversation
//     marked for a human agent, one handoff notice reply on it), in one
//     transaction;
//  2. copied the message to CHAT_DLQ (chat.dlq.<shop>) with the reason in
//     headers;
//  3. published the notice event, so the customer hears at once that a
//     human takes over;
//  4. deleted the message from CHAT_IN;
//  5. acked the advisory.
//
// Every step is idempotent, so an advisory handled twice (a worker died
// half-way) does no harm. The notice is linked to no message: the message's
// own answer comes from an operator's re-drive, or from the human agent.

// Dead-letter headers on CHAT_DLQ copies.
const (
	HeaderDLQReason     = "Peakdesk-Dlq-Reason"
	HeaderDLQSubject    = "Peakdesk-Dlq-Subject"
	HeaderDLQInSeq      = "Peakdesk-Dlq-In-Seq"
	HeaderDLQDeliveries = "Peakdesk-Dlq-Deliveries"
	HeaderDLQEntry      = "Peakdesk-Dlq-Entry"
)

// maxDeliveriesAdvisory is the part of the server's advisory we read.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int    `json:"deliveries"`
}

// moveDeadLetters runs until ctx ends.
func (w *Worker) moveDeadLetters(ctx context.Context) {
	for ctx.Err() == nil {
		// Cancelling the pull when stopping is harmless here: an advisory
		// sent into it is redelivered after the consumer's AckWait.
		fetchCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		batch, err := w.deadCons.Fetch(16, jetstream.FetchContext(fetchCtx))
		if err != nil {
			cancel()
			w.log.Warn("dead letters: fetch failed", "err", err)
			_ = peakdesk.Sleep(ctx, time.Second)
			continue
		}
		for msg := range batch.Messages() {
			w.settle(w.log, msg, w.handleAdvisory(msg))
		}
		cancel()
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) &&
			!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			w.log.Warn("dead letters: fetch failed", "err", err)
			_ = peakdesk.Sleep(ctx, time.Second)
		}
	}
}

// handleAdvisory decides the fate of a max-deliveries advisory: ack once its
// message is moved (steps 1–4), nak to try again later, term for an
// advisory that cannot be read.
func (w *Worker) handleAdvisory(adv jetstream.Msg) verdict {
	// Short and idempotent: finish even when stopping.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var a maxDeliveriesAdvisory
	if err := json.Unmarshal(adv.Data(), &a); err != nil || a.StreamSeq == 0 {
		w.log.Error("dead letters: undecodable advisory dropped", "err", err)
		return term("undecodable advisory")
	}
	if err := w.deadLetter(ctx, a); err != nil {
		w.log.Error("dead letters: moving a message failed; will retry", "in_seq", a.StreamSeq, "err", err)
		return nak(5 * time.Second)
	}
	return ack()
}

func (w *Worker) deadLetter(ctx context.Context, a maxDeliveriesAdvisory) error {
	in, err := w.cfg.JS.Stream(ctx, queue.StreamIn)
	if err != nil {
		return err
	}
	raw, err := in.GetMsg(ctx, a.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // moved already, or answered and acked at the last moment
	}
	if err != nil {
		return fmt.Errorf("get message: %w", err)
	}
	reason := fmt.Sprintf("max deliveries (%d) reached on %s", a.Deliveries, a.Consumer)
	var m peakdesk.Message
	if err := json.Unmarshal(raw.Data, &m); err != nil || m.ID == "" || m.ShopID == "" {
		// Workers terminate undecodable messages, so this is unexpected:
		// keep the bytes for an operator and move on.
		w.log.Error("dead letters: undecodable message copied without an entry", "in_seq", a.StreamSeq)
		if _, err := w.copyToDLQ(ctx, raw, "_invalid", reason, a, 0); err != nil {
			return err
		}
		return deleteIn(ctx, in, a.StreamSeq)
	}
	log := w.log.With("trace_id", peakdesk.ContinueTrace(raw.Header.Get(peakdesk.TraceHeader)).ID,
		"shop", m.ShopID, "conversation_id", m.ConversationID, "message_id", m.ID)

	out, err := w.cfg.DB.RecordDeadLetter(ctx, &storage.DeadLetter{
		Message: m, Subject: raw.Subject, InSeq: a.StreamSeq, Deliveries: a.Deliveries, Reason: reason,
	}, handoffNotice(m.Text))
	if err != nil {
		return err
	}
	if out.Answered != nil {
		// It was answered after all (only its ack was lost): just finish.
		if err := w.publishEvent(ctx, out.Answered); err != nil {
			return err
		}
		return deleteIn(ctx, in, a.StreamSeq)
	}
	seq, err := w.copyToDLQ(ctx, raw, m.ShopID, out.Entry.Reason, a, out.Entry.ID)
	if err != nil {
		return err
	}
	if err := w.cfg.DB.SetDLQSeq(ctx, out.Entry.ID, seq); err != nil {
		return err
	}
	if out.Notice != nil {
		if err := w.publishEvent(ctx, out.Notice); err != nil {
			return err
		}
	}
	if err := deleteIn(ctx, in, a.StreamSeq); err != nil {
		return err
	}
	w.metrics.deadLetters.WithLabelValues(string(m.Priority)).Inc()
	log.Warn("message dead-lettered; conversation handed to a human", "dlq_entry", out.Entry.ID,
		"reason", out.Entry.Reason)
	return nil
}

// copyToDLQ publishes raw to CHAT_DLQ with the reason in headers; a copy
// made twice is deduplicated by its message id.
func (w *Worker) copyToDLQ(ctx context.Context, raw *jetstream.RawStreamMsg, shop, reason string, a maxDeliveriesAdvisory, entry int64) (uint64, error) {
	msg := nats.NewMsg(queue.DLQSubject(shop))
	msg.Data = raw.Data
	for k, v := range raw.Header {
		if !strings.HasPrefix(k, "Nats-") {
			msg.Header[k] = v
		}
	}
	msg.Header.Set(HeaderDLQReason, reason)
	msg.Header.Set(HeaderDLQSubject, raw.Subject)
	msg.Header.Set(HeaderDLQInSeq, strconv.FormatUint(a.StreamSeq, 10))
	msg.Header.Set(HeaderDLQDeliveries, strconv.Itoa(a.Deliveries))
	if entry > 0 {
		msg.Header.Set(HeaderDLQEntry, strconv.FormatInt(entry, 10))
	}
	msg.Header.Set(jetstream.MsgIDHeader, "dlq-"+strconv.FormatUint(a.StreamSeq, 10))
	ack, err := w.cfg.JS.PublishMsg(ctx, msg)
	if err != nil {
		return 0, fmt.Errorf("copy to %s: %w", queue.StreamDLQ, err)
	}
	return ack.Sequence, nil
}

func deleteIn(ctx context.Context, in jetstream.Stream, seq uint64) error {
	if err := in.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete from %s: %w", queue.StreamIn, err)
	}
	return nil
}

func handoffNotice(question string) string {
	return texts.Text(texts.Detect(question, texts.DefaultLang), texts.HandoffDeadLetter, nil)
}
