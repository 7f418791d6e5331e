package dashboard

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/httpjson"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// The operator JSON API (docs/architecture.md), served by the dashboard role beside
// the console and through the same operations layer (outbox.Ops,
// outbox.DLQOps), which scopes every read and change to the operator's shop
// and writes each change to the audit log. Callers are operators holding a
// platform-key token: scope ops to read, ops:write to act; claim shop "*"
// for platform operators, a shop id for a shop's own.
//
//	GET  /v1/ops/actions?state=&kind=&shop=&q=&cursor=&limit=
//	GET  /v1/ops/actions/{id}                 the action with every attempt
//	POST /v1/ops/actions/{id}/retry, /cancel
//	POST /v1/ops/actions/bulk                 {"filter":{…},"op":"retry|cancel"} → {"bulk_id":B,"affected":N}
//	GET  /v1/ops/actions/bulk/{id}            the actions bulk operation B changed, by state now
//	GET  /v1/ops/dlq?shop=&state=&cursor=&limit=
//	POST /v1/ops/dlq/{id}/redrive, /discard

// APIConfig configures the operator JSON API. Every field but Logger is
// required.
type APIConfig struct {
	Auth *token.Authenticator
	Ops  *outbox.Ops
	DLQ  *outbox.DLQOps
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// maxAPIBody bounds a request body of the operator API.
const maxAPIBody = 64 << 10

// RegisterAPI mounts the operator JSON API on mux.
func RegisterAPI(mux *http.ServeMux, cfg APIConfig) {
	h := &api{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()).With("component", "ops-api")}
	mux.Handle("GET /v1/ops/actions", h.handle(h.listActions))
	mux.Handle("GET /v1/ops/actions/{id}", h.handle(h.getAction))
	mux.Handle("POST /v1/ops/actions/{id}/retry", h.handle(func(w http.ResponseWriter, r *http.Request) error {
		return h.changeAction(w, r, h.cfg.Ops.Retry)
	}))
	mux.Handle("POST /v1/ops/actions/{id}/cancel", h.handle(func(w http.ResponseWriter, r *http.Request) error {
		return h.changeAction(w, r, h.cfg.Ops.Cancel)
	}))
	mux.Handle("POST /v1/ops/actions/bulk", h.handle(h.bulkActions))
	mux.Handle("GET /v1/ops/actions/bulk/{id}", h.handle(h.bulkProgress))
	mux.Handle("GET /v1/ops/dlq", h.handle(h.listDLQ))
	mux.Handle("POST /v1/ops/dlq/{id}/redrive", h.handle(func(w http.ResponseWriter, r *http.Request) error {
		return h.changeDLQ(w, r, h.cfg.DLQ.Redrive)
	}))
	mux.Handle("POST /v1/ops/dlq/{id}/discard", h.handle(func(w http.ResponseWriter, r *http.Request) error {
		return h.changeDLQ(w, r, h.cfg.DLQ.Discard)
	}))
}

type api struct {
	cfg APIConfig
	log *slog.Logger
}

func (h *api) handle(fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			httpjson.WriteError(w, r, h.log, err)
		}
	})
}

// operator authenticates an operator; write asks for ops:write.
func (h *api) operator(r *http.Request, write bool) (outbox.Operator, error) {
	c, err := h.cfg.Auth.Authenticate(r)
	if err != nil {
		return outbox.Operator{}, err
	}
	switch {
	case write && !c.HasScope(token.ScopeOpsWrite):
		return outbox.Operator{}, peakdesk.Errorf(peakdesk.EPermissionDenied, "this needs the ops:write scope")
	case !c.HasScope(token.ScopeOps) && !c.HasScope(token.ScopeOpsWrite):
		return outbox.Operator{}, peakdesk.Errorf(peakdesk.EPermissionDenied, "this needs the ops scope")
	}
	return outbox.Operator{ID: c.Subject, Shop: c.Shop}, nil
}

// apiID reads the {id} path value; anything but a positive integer names
// nothing that exists.
func apiID(r *http.Request, what string) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, peakdesk.Errorf(peakdesk.ENotFound, "%s not found", what)
	}
	return id, nil
}

// pageLimit reads ?limit=, 0 when absent.
func pageLimit(r *http.Request, most int) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > most {
		return 0, peakdesk.FieldError("limit", "limit must be an integer within 1..%d", most)
	}
	return n, nil
}

func (h *api) listActions(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, false)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := storage.ActionFilter{State: peakdesk.ActionState(q.Get("state")), Kind: peakdesk.ActionKind(q.Get("kind")),
		Shop: q.Get("shop"), Q: q.Get("q")}
	limit, err := pageLimit(r, 500)
	if err != nil {
		return err
	}
	page, err := h.cfg.Ops.List(r.Context(), op, f, q.Get("cursor"), limit)
	if err != nil {
		return err
	}
	if page.Actions == nil {
		page.Actions = []peakdesk.Action{}
	}
	httpjson.WriteJSON(w, http.StatusOK, page)
	return nil
}

func (h *api) getAction(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, false)
	if err != nil {
		return err
	}
	id, err := apiID(r, "action")
	if err != nil {
		return err
	}
	d, err := h.cfg.Ops.Get(r.Context(), op, id)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, d)
	return nil
}

func (h *api) changeAction(w http.ResponseWriter, r *http.Request,
	fn func(ctx context.Context, op outbox.Operator, id int64) (*peakdesk.Action, error)) error {
	op, err := h.operator(r, true)
	if err != nil {
		return err
	}
	id, err := apiID(r, "action")
	if err != nil {
		return err
	}
	a, err := fn(r.Context(), op, id)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, a)
	return nil
}

// bulkRequest is the body of POST /v1/ops/actions/bulk.
type bulkRequest struct {
	Filter storage.ActionFilter `json:"filter"`
	Op     string               `json:"op"`
}

type bulkResponse struct {
	Op string `json:"op"`
	outbox.BulkResult
}

func (h *api) bulkActions(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, true)
	if err != nil {
		return err
	}
	var req bulkRequest
	if err := httpjson.DecodeObject(r, maxAPIBody, &req); err != nil {
		return err
	}
	res, err := h.cfg.Ops.Bulk(r.Context(), op, req.Filter, req.Op)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, bulkResponse{Op: req.Op, BulkResult: res})
	return nil
}

func (h *api) bulkProgress(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, false)
	if err != nil {
		return err
	}
	id, err := apiID(r, "bulk operation")
	if err != nil {
		return err
	}
	p, err := h.cfg.Ops.BulkProgress(r.Context(), op, id)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, p)
	return nil
}

func (h *api) listDLQ(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, false)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := outbox.DLQFilter{Shop: q.Get("shop"), State: q.Get("state")}
	switch f.State {
	case "", storage.DLQDead, storage.DLQRedriven, storage.DLQDiscarded:
	default:
		return peakdesk.FieldError("state", "state must be one of dead, redriven, discarded")
	}
	if f.Shop != "" && !peakdesk.ValidShopID(f.Shop) {
		return peakdesk.FieldError("shop", "shop is malformed")
	}
	limit, err := pageLimit(r, 500)
	if err != nil {
		return err
	}
	page, err := h.cfg.DLQ.List(r.Context(), op, f, q.Get("cursor"), limit)
	if err != nil {
		return err
	}
	if page.Entries == nil {
		page.Entries = []storage.DLQEntry{}
	}
	httpjson.WriteJSON(w, http.StatusOK, page)
	return nil
}

func (h *api) changeDLQ(w http.ResponseWriter, r *http.Request,
	fn func(ctx context.Context, op outbox.Operator, id int64) (*storage.DLQEntry, error)) error {
	op, err := h.operator(r, true)
	if err != nil {
		return err
	}
	id, err := apiID(r, "dead letter")
	if err != nil {
		return err
	}
	e, err := fn(r.Context(), op, id)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"entry": e})
	return nil
}
