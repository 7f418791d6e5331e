package ingest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// maxOpsBody bounds an operator request body.
const maxOpsBody = 64 << 10

// RegisterOpsActions mounts the operator API for outbox actions (DESIGN.md
// §7) on mux. Reads need scope ops, changes ops:write (which includes
// reading). A token whose shop claim is "*" is a platform operator; any
// other shop claim confines the operator to that shop.
//
//	GET  /v1/ops/actions?state=&kind=&shop=&q=&cursor=&limit=  → {"actions":[…],"next_cursor"?}
//	GET  /v1/ops/actions/{id}                                  → {"action":{…},"attempts":[…]}
//	POST /v1/ops/actions/{id}/retry                            → the action
//	POST /v1/ops/actions/{id}/cancel                           → the action
//	POST /v1/ops/actions/bulk {"filter":{…},"op":"retry|cancel"} → {"op","affected"}
func RegisterOpsActions(mux *http.ServeMux, auth *token.Authenticator, ops *outbox.Ops, log *slog.Logger) {
	h := &opsActions{auth: auth, ops: ops, log: cmp.Or(log, slog.Default()).With("component", "ops-api")}
	mux.Handle("GET /v1/ops/actions", h.handle(h.list))
	mux.Handle("GET /v1/ops/actions/{id}", h.handle(h.get))
	mux.Handle("POST /v1/ops/actions/{id}/retry", h.handle(h.retry))
	mux.Handle("POST /v1/ops/actions/{id}/cancel", h.handle(h.cancel))
	mux.Handle("POST /v1/ops/actions/bulk", h.handle(h.bulk))
}

type opsActions struct {
	auth *token.Authenticator
	ops  *outbox.Ops
	log  *slog.Logger
}

func (h *opsActions) handle(fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			writeError(w, r, h.log, err)
		}
	})
}

// operator authenticates an operator; write asks for ops:write.
func (h *opsActions) operator(r *http.Request, write bool) (outbox.Operator, error) {
	c, err := h.auth.Authenticate(r)
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

func (h *opsActions) list(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, false)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := storage.ActionFilter{
		State: peakdesk.ActionState(q.Get("state")),
		Kind:  peakdesk.ActionKind(q.Get("kind")),
		Shop:  q.Get("shop"),
		Q:     q.Get("q"),
	}
	limit := 0
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 {
			return peakdesk.FieldError("limit", "limit must be a positive integer")
		}
	}
	page, err := h.ops.List(r.Context(), op, f, q.Get("cursor"), limit)
	if err != nil {
		return err
	}
	if page.Actions == nil {
		page.Actions = []peakdesk.Action{}
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

// actionID reads the {id} path value; anything but a positive integer is
// an action that does not exist.
func actionID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, peakdesk.Errorf(peakdesk.ENotFound, "action not found")
	}
	return id, nil
}

func (h *opsActions) get(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, false)
	if err != nil {
		return err
	}
	id, err := actionID(r)
	if err != nil {
		return err
	}
	d, err := h.ops.Get(r.Context(), op, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

func (h *opsActions) retry(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.ops.Retry)
}

func (h *opsActions) cancel(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.ops.Cancel)
}

func (h *opsActions) change(w http.ResponseWriter, r *http.Request,
	fn func(ctx context.Context, op outbox.Operator, id int64) (*peakdesk.Action, error)) error {
	op, err := h.operator(r, true)
	if err != nil {
		return err
	}
	id, err := actionID(r)
	if err != nil {
		return err
	}
	a, err := fn(r.Context(), op, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, a)
	return nil
}

// bulkRequest is the body of POST /v1/ops/actions/bulk.
type bulkRequest struct {
	Filter storage.ActionFilter `json:"filter"`
	Op     string               `json:"op"`
}

type bulkResponse struct {
	Op       string `json:"op"`
	Affected int64  `json:"affected"`
}

func (h *opsActions) bulk(w http.ResponseWriter, r *http.Request) error {
	op, err := h.operator(r, true)
	if err != nil {
		return err
	}
	body, err := readBody(r, maxOpsBody)
	if err != nil {
		return err
	}
	var req bulkRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return peakdesk.Errorf(peakdesk.EInvalid, "request body must be one JSON object")
	}
	n, err := h.ops.Bulk(r.Context(), op, req.Filter, req.Op)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, bulkResponse{Op: req.Op, Affected: n})
	return nil
}
