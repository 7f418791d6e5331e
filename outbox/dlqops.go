package outbox

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// DLQOpsConfig configures DLQOps. DB and JS are required.
type DLQOpsConfig struct {
	DB *storage.DB
	JS jetstream.JetStream
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// BulkChunk is how many dead letters one transaction of a bulk
	// operation resolves. Default 500.
	BulkChunk int
}

// DLQOps are the operator operations on the chat dead-letter queue
// (docs/architecture.md): look at dead letters, re-drive a message (queue it again)
// or discard it (it stays failed, with a human agent), one at a time or all
// that match a filter. Every change is written to the audit log in its
// transaction. Errors are coded (peakdesk.Error).
type DLQOps struct {
	cfg DLQOpsConfig
	log *slog.Logger
}

// NewDLQOps returns DLQOps for cfg.
func NewDLQOps(cfg DLQOpsConfig) (*DLQOps, error) {
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.BulkChunk = cmp.Or(cfg.BulkChunk, 500)
	if cfg.DB == nil || cfg.JS == nil {
		return nil, errors.New("outbox: dlq ops config: DB and JS are required")
	}
	return &DLQOps{cfg: cfg, log: cfg.Logger.With("component", "dlq-ops")}, nil
}

// DLQFilter selects dead letters for a listing or a bulk operation.
type DLQFilter struct {
	// Shop narrows a platform operator's view to one shop.
	Shop string
	// State is dead, redriven or discarded; empty = any.
	State string
}

func (op Operator) dlqFilter(f DLQFilter) (storage.DLQFilter, error) {
	if err := op.check(); err != nil {
		return storage.DLQFilter{}, err
	}
	switch f.State {
	case "", storage.DLQDead, storage.DLQRedriven, storage.DLQDiscarded:
	default:
		return storage.DLQFilter{}, peakdesk.FieldError("state", "state must be one of dead, redriven, discarded")
	}
	if f.Shop != "" && !shopIDRe.MatchString(f.Shop) {
		return storage.DLQFilter{}, peakdesk.FieldError("shop", "shop is not a shop id")
	}
	if op.Shop != storage.AllShops && f.Shop != "" && f.Shop != op.Shop {
		return storage.DLQFilter{}, &peakdesk.Error{Code: peakdesk.EPermissionDenied, Field: "shop",
			Message: "operators of a shop may only see that shop"}
	}
	return storage.DLQFilter{Scope: op.Shop, Shop: f.Shop, State: f.State}, nil
}

// DLQPage is one page of dead letters; NextCursor is empty on the last.
type DLQPage struct {
	Entries    []storage.DLQEntry `json:"entries"`
	NextCursor string             `json:"next_cursor,omitempty"`
}

// List returns the dead letters f selects, newest first, limit at a time
// (0 = DefaultPageSize), after cursor (empty = from the newest).
func (o *DLQOps) List(ctx context.Context, op Operator, f DLQFilter, cursor string, limit int) (*DLQPage, error) {
	sf, err := op.dlqFilter(f)
	if err != nil {
		return nil, err
	}
	switch {
	case limit == 0:
		limit = DefaultPageSize
	case limit < 1 || limit > MaxPageSize:
		return nil, peakdesk.FieldError("limit", "limit must be within 1..%d", MaxPageSize)
	}
	if sf.Before, err = decodeCursor(cursor); err != nil {
		return nil, err
	}
	sf.Limit = limit + 1
	entries, err := o.cfg.DB.ListDLQ(ctx, sf)
	if err != nil {
		return nil, err
	}
	page := &DLQPage{Entries: entries}
	if len(entries) > limit {
		page.Entries = entries[:limit]
		page.NextCursor = encodeCursor(page.Entries[limit-1].ID)
	}
	return page, nil
}

// Count counts the dead letters f selects.
func (o *DLQOps) Count(ctx context.Context, op Operator, f DLQFilter) (int64, error) {
	sf, err := op.dlqFilter(f)
	if err != nil {
		return 0, err
	}
	return o.cfg.DB.CountDLQ(ctx, sf)
}

// Get returns dead letter id, or not_found (also for another shop's).
func (o *DLQOps) Get(ctx context.Context, op Operator, id int64) (*storage.DLQEntry, error) {
	if err := op.check(); err != nil {
		return nil, err
	}
	e, err := o.cfg.DB.DLQEntry(ctx, op.Shop, id)
	if err != nil {
		return nil, dlqError(err, "")
	}
	return e, nil
}

func dlqError(err error, verb string) error {
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return peakdesk.Errorf(peakdesk.ENotFound, "dead letter not found")
	case errors.Is(err, storage.ErrDLQResolved):
		return peakdesk.Errorf(peakdesk.EInvalid, "the dead letter was resolved otherwise; it cannot be %s", verb)
	}
	return err
}

// Redrive puts dead letter id's message back in line and re-publishes it
// to CHAT_IN on its original subject. The re-drive is recorded first: if
// the publish then fails, the sweeper answers the waiting message anyway
// and the error says so. Repeating it is harmless (same Nats-Msg-Id, and
// the worker answers a message once).
func (o *DLQOps) Redrive(ctx context.Context, op Operator, id int64) (*storage.DLQEntry, error) {
	if err := op.check(); err != nil {
		return nil, err
	}
	e, err := o.cfg.DB.RedriveDLQ(ctx, storage.DLQAction{ID: id, Scope: op.Shop, Actor: op.ID})
	if err != nil {
		return nil, dlqError(err, "re-driven")
	}
	if err := o.publish(ctx, e); err != nil {
		o.log.WarnContext(ctx, "re-drive recorded but not published; the sweeper answers it", "dlq_entry", e.ID,
			"shop", e.ShopID, "message_id", e.MessageID, "err", err)
		return e, &peakdesk.Error{Code: peakdesk.EOverloaded, RetryAfter: 5 * time.Second,
			Message: "the re-drive is recorded but the queue did not take it; the message will be answered anyway, or retry"}
	}
	o.log.InfoContext(ctx, "dead letter re-driven", "dlq_entry", e.ID, "shop", e.ShopID,
		"message_id", e.MessageID, "operator", op.ID)
	return e, nil
}

// Discard marks dead letter id discarded: its message stays failed and its
// conversation with a human agent.
func (o *DLQOps) Discard(ctx context.Context, op Operator, id int64) (*storage.DLQEntry, error) {
	if err := op.check(); err != nil {
		return nil, err
	}
	e, err := o.cfg.DB.DiscardDLQ(ctx, storage.DLQAction{ID: id, Scope: op.Shop, Actor: op.ID})
	if err != nil {
		return nil, dlqError(err, "discarded")
	}
	o.log.InfoContext(ctx, "dead letter discarded", "dlq_entry", e.ID, "shop", e.ShopID,
		"message_id", e.MessageID, "operator", op.ID)
	return e, nil
}

// Bulk re-drives or discards every dead letter of f.Shop (within the
// operator's scope) that is still dead, a chunk per transaction, and
// returns how many it resolved. operation is "redrive" or "discard". Re-
// driven messages whose publish fails are answered by the sweeper.
func (o *DLQOps) Bulk(ctx context.Context, op Operator, f DLQFilter, operation string) (int64, error) {
	f.State = storage.DLQDead
	sf, err := op.dlqFilter(f)
	if err != nil {
		return 0, err
	}
	var to string
	switch operation {
	case "redrive":
		to = storage.DLQRedriven
	case "discard":
		to = storage.DLQDiscarded
	default:
		return 0, peakdesk.FieldError("op", "op must be redrive or discard")
	}
	var n, unpublished int64
	for {
		entries, err := o.cfg.DB.BulkResolveDLQ(ctx, sf, to, op.ID, o.cfg.BulkChunk)
		if err != nil {
			return n, err
		}
		if len(entries) == 0 {
			break
		}
		n += int64(len(entries))
		if to == storage.DLQRedriven {
			for i := range entries {
				if err := o.publish(ctx, &entries[i]); err != nil {
					unpublished++
				}
			}
		}
	}
	o.log.InfoContext(ctx, "operator dlq.bulk_"+operation, "operator", op.ID, "scope", op.Shop, "shop", f.Shop,
		"affected", n, "unpublished", unpublished)
	return n, nil
}

// publish re-publishes e's message: the CHAT_DLQ copy (with its trace
// header) or, if that has aged out, the stored message.
func (o *DLQOps) publish(ctx context.Context, e *storage.DLQEntry) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	msg := nats.NewMsg(e.Subject)
	msg.Header.Set(jetstream.MsgIDHeader, "redrive-"+strconv.FormatInt(e.ID, 10))
	if e.DLQSeq > 0 {
		if s, err := o.cfg.JS.Stream(ctx, queue.StreamDLQ); err == nil {
			if raw, err := s.GetMsg(ctx, e.DLQSeq); err == nil {
				msg.Data = raw.Data
				if tp := raw.Header.Get("traceparent"); tp != "" {
					msg.Header.Set("traceparent", tp)
				}
			}
		}
	}
	if msg.Data == nil {
		m, err := o.cfg.DB.QueuedMessage(ctx, e.ShopID, e.MessageID)
		if err != nil {
			return err
		}
		if msg.Data, err = json.Marshal(m); err != nil {
			return err
		}
	}
	_, err := o.cfg.JS.PublishMsg(ctx, msg)
	return err
}
