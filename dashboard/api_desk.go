package dashboard

import (
	"bytes"
	"cmp"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/httpjson"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// The agent API of human takeover (docs/architecture.md), served by the
// dashboard role beside the console's inbox and through the same Desk: for
// a shop's own agent desk (Chatwoot, Zendesk, …) that learns of handoffs
// and customer messages from the desk webhooks. Every call needs a token of
// the shop (its own key) with scope agent; the token's subject is the
// agent, and signs the agent's replies to customers.
//
//	GET  /v1/inbox?limit=                   → {"waiting":[…],"waiting_total":N,"mine":[…]}
//	POST /v1/conversations/{id}/claim       → the conversation (409 conflict: another agent has it)
//	POST /v1/conversations/{id}/replies {"text"} (Idempotency-Key) → 201 the reply (200 for a repeat)
//	POST /v1/conversations/{id}/resolve     → the conversation
//	POST /v1/conversations/{id}/handback    → the conversation
//
// An agent's token also reads the shop's conversations on the edge
// (GET /v1/conversations/{id}, its events with `event: message` for each
// customer message stored for a human) like a service token.

// DeskAPIConfig configures the agent API. Every field but Logger is
// required.
type DeskAPIConfig struct {
	Auth *token.Authenticator
	Desk *outbox.Desk
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// RegisterDeskAPI mounts the agent API on mux.
func RegisterDeskAPI(mux *http.ServeMux, cfg DeskAPIConfig) {
	h := &deskAPI{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default()).With("component", "desk-api")}
	mux.Handle("GET /v1/inbox", h.handle(h.inbox))
	mux.Handle("POST /v1/conversations/{id}/claim", h.handle(h.claim))
	mux.Handle("POST /v1/conversations/{id}/replies", h.handle(h.reply))
	mux.Handle("POST /v1/conversations/{id}/resolve", h.handle(h.resolve))
	mux.Handle("POST /v1/conversations/{id}/handback", h.handle(h.handback))
}

type deskAPI struct {
	cfg DeskAPIConfig
	log *slog.Logger
}

func (h *deskAPI) handle(fn func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trace := peakdesk.ContinueTrace(r.Header.Get(peakdesk.TraceHeader))
		r = r.WithContext(peakdesk.WithTrace(r.Context(), trace))
		w.Header().Set(peakdesk.TraceHeader, trace.Parent)
		if err := fn(w, r); err != nil {
			httpjson.WriteError(w, r, h.log.With("trace_id", trace.ID), err)
		}
	})
}

// agent authenticates an agent of one shop.
func (h *deskAPI) agent(r *http.Request) (outbox.Agent, error) {
	c, err := h.cfg.Auth.Authenticate(r)
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

// deskInboxItem is a conversation of an agent's inbox.
type deskInboxItem struct {
	peakdesk.DeskConversation
	// Pending counts the customer's messages no one answered yet.
	Pending  int       `json:"pending"`
	LastText string    `json:"last_text,omitempty"`
	LastAt   time.Time `json:"last_at,omitzero"`
}

func deskInboxItems(entries []storage.InboxEntry) []deskInboxItem {
	out := make([]deskInboxItem, len(entries))
	for i, e := range entries {
		out[i] = deskInboxItem{DeskConversation: e.DeskConversation, Pending: e.Pending, LastText: e.LastText, LastAt: e.LastAt}
	}
	return out
}

func (h *deskAPI) inbox(w http.ResponseWriter, r *http.Request) error {
	a, err := h.agent(r)
	if err != nil {
		return err
	}
	limit, err := pageLimit(r, outbox.MaxPageSize)
	if err != nil {
		return err
	}
	in, err := h.cfg.Desk.Inbox(r.Context(), a, cmp.Or(limit, outbox.DefaultPageSize))
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"waiting": deskInboxItems(in.Waiting),
		"waiting_total": in.WaitingTotal, "mine": deskInboxItems(in.Mine)})
	return nil
}

func (h *deskAPI) claim(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.cfg.Desk.Claim)
}

func (h *deskAPI) resolve(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.cfg.Desk.Resolve)
}

func (h *deskAPI) handback(w http.ResponseWriter, r *http.Request) error {
	return h.change(w, r, h.cfg.Desk.HandBack)
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
	httpjson.WriteJSON(w, http.StatusOK, c)
	return nil
}

// deskReplyRequest is the body of POST /v1/conversations/{id}/replies.
type deskReplyRequest struct {
	Text string `json:"text"`
}

// maxReplyKey bounds an agent reply's Idempotency-Key, as the edge's.
const maxReplyKey = 128

func (h *deskAPI) reply(w http.ResponseWriter, r *http.Request) error {
	a, err := h.agent(r)
	if err != nil {
		return err
	}
	key := strings.TrimSpace(r.Header.Get("Idempotency-Key"))
	if len(key) > maxReplyKey || strings.IndexFunc(key, func(c rune) bool { return c < 0x21 || c > 0x7e }) >= 0 {
		return peakdesk.FieldError("Idempotency-Key", "Idempotency-Key must be 1..%d printable ASCII characters", maxReplyKey)
	}
	// Invalid UTF-8 is refused, not turned into U+FFFD by the decoder.
	body, err := httpjson.ReadBody(r, maxAPIBody)
	if err != nil {
		return err
	}
	if !utf8.Valid(body) {
		return peakdesk.Errorf(peakdesk.EInvalid, "request body is not valid UTF-8")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var req deskReplyRequest
	if err := httpjson.DecodeObject(r, maxAPIBody, &req); err != nil {
		return err
	}
	reply, stored, err := h.cfg.Desk.Reply(r.Context(), a, r.PathValue("id"), req.Text, key)
	if err != nil {
		return err
	}
	status := http.StatusCreated
	if !stored {
		status = http.StatusOK
	}
	httpjson.WriteJSON(w, status, reply)
	return nil
}
