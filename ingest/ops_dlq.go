package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// RegisterOpsDLQ mounts the operator API for the chat dead-letter queue
// (DESIGN.md §5, §7) on mux. Reads need scope ops, changes ops:write (which
// includes reading). A token whose shop claim is "*" is a platform
// operator; any other shop claim confines the operator to that shop (other
// shops' entries are not found). Every change is written to the operator
// audit log with who and when.
//
//	GET  /v1/ops/dlq?shop=&state=&cursor=&limit= → {"entries":[…],"next_cursor"?}
//	POST /v1/ops/dlq/{id}/redrive                → {"entry":{…}}: the message is queued again
//	POST /v1/ops/dlq/{id}/discard                → {"entry":{…}}: it stays failed, with a human agent
//
// A re-drive puts the stored message back in line and re-publishes it to
// CHAT_IN on its original subject; repeating it is harmless (same
// Nats-Msg-Id, and the worker answers a message once). A discarded entry
// cannot be re-driven, nor a re-driven one discarded.
func RegisterOpsDLQ(mux *http.ServeMux, auth *token.Authenticator, db *storage.DB, js jetstream.JetStream, log *slog.Logger) {
	h := &opsDLQ{auth: auth, db: db, js: js, log: cmp.Or(log, slog.Default()).With("component", "ops-api")}
	mux.Handle("GET /v1/ops/dlq", h.handle(h.list))
	mux.Handle("POST /v1/ops/dlq/{id}/redrive", h.handle(h.redrive))
	mux.Handle("POST /v1/ops/dlq/{id}/discard", h.handle(h.discard))
}

type opsDLQ struct {
	auth *token.Authenticator
	db   *storage.DB
	js   jetstream.JetStream
	log  *slog.Logger
}

func (h *opsDLQ) handle(fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			writeError(w, r, h.log, err)
		}
	})
}

// operator authenticates an operator; write asks for ops:write.
func (h *opsDLQ) operator(r *http.Request, write bool) (*token.Claims, error) {
	c, err := h.auth.Authenticate(r)
	if err != nil {
		return nil, err
	}
	switch {
	case write && !c.HasScope(token.ScopeOpsWrite):
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied, "this needs the ops:write scope")
	case !c.HasScope(token.ScopeOps) && !c.HasScope(token.ScopeOpsWrite):
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied, "this needs the ops scope")
	}
	return c, nil
}

type dlqPage struct {
	Entries    []storage.DLQEntry `json:"entries"`
	NextCursor string             `json:"next_cursor,omitempty"`
}

func (h *opsDLQ) list(w http.ResponseWriter, r *http.Request) error {
	c, err := h.operator(r, false)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := storage.DLQFilter{Scope: c.Shop, Shop: q.Get("shop"), State: q.Get("state"), Limit: 50}
	switch f.State {
	case "", storage.DLQDead, storage.DLQRedriven, storage.DLQDiscarded:
	default:
		return peakdesk.FieldError("state", "state must be one of dead, redriven, discarded")
	}
	if f.Shop != "" && !peakdesk.ValidShopID(f.Shop) {
		return peakdesk.FieldError("shop", "shop is malformed")
	}
	if s := q.Get("limit"); s != "" {
		if f.Limit, err = strconv.Atoi(s); err != nil || f.Limit < 1 || f.Limit > 500 {
			return peakdesk.FieldError("limit", "limit must be an integer within 1..500")
		}
	}
	if s := q.Get("cursor"); s != "" {
		if f.Before, err = strconv.ParseInt(s, 10, 64); err != nil || f.Before < 1 {
			return peakdesk.FieldError("cursor", "cursor is malformed")
		}
	}
	entries, err := h.db.ListDLQ(r.Context(), f)
	if err != nil {
		return err
	}
	page := dlqPage{Entries: entries}
	if page.Entries == nil {
		page.Entries = []storage.DLQEntry{}
	}
	if len(entries) == f.Limit {
		page.NextCursor = strconv.FormatInt(entries[len(entries)-1].ID, 10)
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

// dlqAction reads the {id} path value and the operator behind a change.
func (h *opsDLQ) dlqAction(r *http.Request) (storage.DLQAction, error) {
	c, err := h.operator(r, true)
	if err != nil {
		return storage.DLQAction{}, err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return storage.DLQAction{}, peakdesk.Errorf(peakdesk.ENotFound, "dead letter not found")
	}
	return storage.DLQAction{ID: id, Scope: c.Shop, Actor: c.Subject}, nil
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

func (h *opsDLQ) redrive(w http.ResponseWriter, r *http.Request) error {
	a, err := h.dlqAction(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	// Record first: once the message is back in line, the sweeper answers
	// it even if the publish below fails.
	e, err := h.db.RedriveDLQ(ctx, a)
	if err != nil {
		return dlqError(err, "re-driven")
	}
	msg, err := h.redriveMsg(ctx, e)
	if err == nil {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, err = h.js.PublishMsg(pctx, msg)
		cancel()
	}
	if err != nil {
		h.log.WarnContext(ctx, "re-drive recorded but not published; the sweeper answers it", "dlq_entry", e.ID,
			"shop", e.ShopID, "message_id", e.MessageID, "err", err)
		return &peakdesk.Error{Code: peakdesk.EOverloaded, RetryAfter: 5 * time.Second,
			Message: "the re-drive is recorded but the queue did not take it; the message will be answered anyway, or retry"}
	}
	h.log.InfoContext(ctx, "dead letter re-driven", "dlq_entry", e.ID, "shop", e.ShopID,
		"message_id", e.MessageID, "operator", a.Actor)
	writeJSON(w, http.StatusOK, map[string]any{"entry": e})
	return nil
}

// redriveMsg is the message to queue again: the CHAT_DLQ copy (with its
// trace header) or, if that has aged out, the stored message.
func (h *opsDLQ) redriveMsg(ctx context.Context, e *storage.DLQEntry) (*nats.Msg, error) {
	msg := nats.NewMsg(e.Subject)
	msg.Header.Set(jetstream.MsgIDHeader, "redrive-"+strconv.FormatInt(e.ID, 10))
	if e.DLQSeq > 0 {
		if s, err := h.js.Stream(ctx, queue.StreamDLQ); err == nil {
			if raw, err := s.GetMsg(ctx, e.DLQSeq); err == nil {
				msg.Data = raw.Data
				if tp := raw.Header.Get("traceparent"); tp != "" {
					msg.Header.Set("traceparent", tp)
				}
				return msg, nil
			}
		}
	}
	m, err := h.db.QueuedMessage(ctx, e.ShopID, e.MessageID)
	if err != nil {
		return nil, err
	}
	if msg.Data, err = json.Marshal(m); err != nil {
		return nil, err
	}
	return msg, nil
}

func (h *opsDLQ) discard(w http.ResponseWriter, r *http.Request) error {
	a, err := h.dlqAction(r)
	if err != nil {
		return err
	}
	e, err := h.db.DiscardDLQ(r.Context(), a)
	if err != nil {
		return dlqError(err, "discarded")
	}
	h.log.InfoContext(r.Context(), "dead letter discarded", "dlq_entry", e.ID, "shop", e.ShopID,
		"message_id", e.MessageID, "operator", a.Actor)
	writeJSON(w, http.StatusOK, map[string]any{"entry": e})
	return nil
}
