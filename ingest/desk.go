package ingest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// RegisterDesk mounts the agent API of human takeover (DESIGN.md §9.2) on
// mux, for a shop's own agent desk (Chatwoot, Zendesk, …) that learns of
// handoffs and customer messages from the desk webhooks. Every call needs a
// token of the shop with scope agent; its subject is the agent.
//
//	GET  /v1/inbox?limit=                   → {"waiting":[…],"waiting_total":N,"mine":[…]}
//	POST /v1/conversations/{id}/claim       → the conversation (409 conflict: another agent has it)
//	POST /v1/conversations/{id}/replies {"text"} (Idempotency-Key) → 201 the reply (200 for a repeat)
//	POST /v1/conversations/{id}/resolve     → the conversation
//	POST /v1/conversations/{id}/handback    → the conversation
//
// An agent's token may also read the shop's conversations
// (GET /v1/conversations/{id}, its events) like a service token.
func RegisterDesk(mux *http.ServeMux, auth *token.Authenticator, desk *outbox.Desk, log *slog.Logger) {
	h := &deskAPI{auth: auth, desk: desk, log: cmp.Or(log, slog.Default()).With("component", "desk-api")}
	mux.Handle("GET /v1/inbox", h.handle(h.inbox))
	mux.Handle("POST /v1/conversations/{id}/claim", h.handle(h.claim))
	mux.Handle("POST /v1/conversations/{id}/replies", h.handle(h.reply))
	mux.Handle("POST /v1/conversations/{id}/resolve", h.handle(h.resolve))
	mux.Handle("POST /v1/conversations/{id}/handback", h.handle(h.handback))
}

type deskAPI struct {
	auth *token.Authenticator
	desk *outbox.Desk
	log  *slog.Logger
}

func (h *deskAPI) handle(fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trace := peakdesk.ContinueTrace(r.Header.Get(peakdesk.TraceHeader))
		r = r.WithContext(peakdesk.WithTrace(r.Context(), trace))
		w.Header().Set(peakdesk.TraceHeader, trace.Parent)
		if err := fn(w, r); err != nil {
			writeError(w, r, h.log.With("trace_id", trace.ID), err)
		}
	})
}

// agent authenticates an agent of one shop.
func (h *deskAPI) agent(r *http.Request) (outbox.Agent, error) {
	c, err := h.auth.Authenticate(r)
	switch {
	case err != nil:
		return outbox.Agent{}, err
	case !c.HasScope(token.ScopeAgent):
		return outbox.Agent{}, peakdesk.Errorf(peakdesk.EPermissionDenied, "this needs the agent scope")
	case c.Shop == storage.AllShops:
		return outbox.Agent{}, peakdesk.Errorf(peakdesk.EPermissionDenied, "an agent token names one shop")
	}
	return outbox.Agent{ID: c.Subject, Name: c.Subject, Shop: c.Shop, Via: "api"}, nil
}

// inboxItem is a conversation of an agent's inbox.
type inboxItem struct {
	peakdesk.DeskConversation
	// Pending counts the customer's messages no one answered yet.
	Pending  int       `json:"pending"`
	LastText string    `json:"last_text,omitempty"`
	LastAt   time.Time `json:"last_at,omitzero"`
}

func inboxItems(entries []storage.InboxEntry) []inboxItem {
	out := make([]inboxItem, len(entries))
	for i, e := range entries {
		out[i] = inboxItem{DeskConversation: e.DeskConversation, Pending: e.Pending, LastText: e.LastText, LastAt: e.LastAt}
	}
	return out
}

func (h *deskAPI) inbox(w http.ResponseWriter, r *http.Request) error {
	a, err := h.agent(r)
	if err != nil {
		return err
	}
	limit := outbox.DefaultPageSize
	if s := r.URL.Query().Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > outbox.MaxPageSize {
			return peakdesk.FieldError("limit", "limit must be 1..%d", outbox.MaxPageSize)
		}
	}
	in, err := h.desk.Inbox(r.Context(), a, limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"waiting": inboxItems(in.Waiting), "waiting_total": in.WaitingTotal,
		"mine": inboxItems(in.Mine)})
	return nil
}

func (h *deskAPI) claim(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.desk.Claim)
}

func (h *deskAPI) resolve(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.desk.Resolve)
}

func (h *deskAPI) handback(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.desk.HandBack)
}

func (h *deskAPI) change(w http.ResponseWriter, r *http.Request,
	fn func(context.Context, outbox.Agent, string) (*peakdesk.DeskConversation, error)) error {
	a, err := h.agent(r)
	if err != nil {
		return err
	}
	c, err := fn(r.Context(), a, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

// replyRequest is the body of POST /v1/conversations/{id}/replies.
type replyRequest struct {
	Text string `json:"text"`
}

func (h *deskAPI) reply(w http.ResponseWriter, r *http.Request) error {
	a, err := h.agent(r)
	if err != nil {
		return err
	}
	key := strings.TrimSpace(r.Header.Get("Idempotency-Key"))
	if key != "" && !printableASCII(key, maxKeyLen) {
		return peakdesk.FieldError("Idempotency-Key", "Idempotency-Key must be 1..%d printable ASCII characters", maxKeyLen)
	}
	body, err := readBody(r, peakdesk.MaxBodyBytes)
	if err != nil {
		return err
	}
	if !utf8.Valid(body) {
		return peakdesk.Errorf(peakdesk.EInvalid, "request body is not valid UTF-8")
	}
	var req replyRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return peakdesk.Errorf(peakdesk.EInvalid, "request body must be one JSON object")
	}
	reply, stored, err := h.desk.Reply(r.Context(), a, r.PathValue("id"), req.Text, key)
	if err != nil {
		return err
	}
	status := http.StatusCreated
	if !stored {
		status = http.StatusOK
	}
	writeJSON(w, status, reply)
	return nil
}
