package dashboard

import (
	"cmp"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/shopadmin"
	"github.com/peakdesk/peakdesk/ingest/httpjson"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
)

// Bodies of the admin API: settings are small; an FAQ file may be large.
const (
	maxSettingsBody = 64 << 10
	maxFAQBody      = 8 << 20
)

// RegisterAdminAPI mounts the shop administration JSON API (docs/integration.md)
// on mux. Every call needs an operator token (platform key) with scope
// admin: shop "*" administers every shop and creates shops, a shop id only
// that shop (not its request limits or admission thresholds). Errors have
// the edge's format ({"error":{"code","message","field"?}}).
//
//	GET    /v1/admin/shops?after=&limit=         → {"shops":[…],"next_after"?}
//	POST   /v1/admin/shops {"id","name",…}       → 201 {"shop":{…},"webhook_secret"?}
//	GET    /v1/admin/shops/{shop}                → {"shop":{…}}  (secrets masked)
//	PATCH  /v1/admin/shops/{shop} {…}            → {"shop":{…}}  (null = default)
//	POST   /v1/admin/shops/{shop}/rotate-key {"overlap":"24h"} → {"kid","secret","older_keys_expire"}
//	GET    /v1/admin/shops/{shop}/faq            → {"entries":[…]}
//	POST   /v1/admin/shops/{shop}/faq?replace=   CSV or JSON body, or multipart "file" → {"inserted",…}
//	PUT    /v1/admin/shops/{shop}/faq/{id} {"question","answer","tags"} → {"entry":{…}}
//	DELETE /v1/admin/shops/{shop}/faq/{id}       → 204
//	POST   /v1/admin/shops/{shop}/faq/test {"question"} → {"matches":[…],"threshold","answers_alone"}
func (c *Console) RegisterAdminAPI(mux *http.ServeMux, auth *token.Authenticator) {
	h := &adminAPI{auth: auth, admin: c.admin, log: c.log.With("component", "admin-api")}
	mux.Handle("GET /v1/admin/shops", h.handle(h.list))
	mux.Handle("POST /v1/admin/shops", h.handle(h.create))
	mux.Handle("GET /v1/admin/shops/{shop}", h.handle(h.get))
	mux.Handle("PATCH /v1/admin/shops/{shop}", h.handle(h.update))
	mux.Handle("POST /v1/admin/shops/{shop}/rotate-key", h.handle(h.rotateKey))
	mux.Handle("GET /v1/admin/shops/{shop}/faq", h.handle(h.faqList))
	mux.Handle("POST /v1/admin/shops/{shop}/faq", h.handle(h.faqImport))
	mux.Handle("PUT /v1/admin/shops/{shop}/faq/{id}", h.handle(h.faqPut))
	mux.Handle("DELETE /v1/admin/shops/{shop}/faq/{id}", h.handle(h.faqDelete))
	mux.Handle("POST /v1/admin/shops/{shop}/faq/test", h.handle(h.faqTest))
}

type adminAPI struct {
	auth  *token.Authenticator
	admin *shopadmin.Admin
	log   *slog.Logger
}

type apiFunc func(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error

// handle authenticates the admin and answers fn's error in the API's
// format. Nothing here logs a request body: it may hold secrets.
func (h *adminAPI) handle(fn apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := h.auth.Authenticate(r)
		if err == nil && !c.HasScope(token.ScopeAdmin) {
			err = peakdesk.Errorf(peakdesk.EPermissionDenied, "this needs the admin scope")
		}
		if err == nil {
			err = fn(w, r, shopadmin.Operator{ID: c.Subject, Shop: c.Shop})
		}
		if err != nil {
			httpjson.WriteError(w, r, h.log, err)
		}
	})
}

// decodeStrict reads JSON into v, refusing unknown fields.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return peakdesk.Errorf(peakdesk.EInvalid, "body: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

func (h *adminAPI) list(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	limit = min(max(cmp.Or(limit, 100), 1), 500)
	shops, err := h.admin.List(r.Context(), o, r.URL.Query().Get("after"), limit)
	if err != nil {
		return err
	}
	res := map[string]any{"shops": shops}
	if shops == nil {
		res["shops"] = []storage.ShopSummary{}
	}
	if len(shops) == limit {
		res["next_after"] = shops[len(shops)-1].ID
	}
	httpjson.WriteJSON(w, http.StatusOK, res)
	return nil
}

// createRequest is a new shop: its id and name, and any settings.
type createRequest struct {
	ID string `json:"id"`
	shopadmin.Patch
}

func (h *adminAPI) create(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	var req createRequest
	if err := httpjson.DecodeObject(r, maxSettingsBody, &req); err != nil {
		return err
	}
	name := ""
	if req.Name.Value != nil {
		name = *req.Name.Value
	}
	res, err := h.admin.Create(r.Context(), o, req.ID, name, req.Patch)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusCreated, res)
	return nil
}

func (h *adminAPI) get(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	s, err := h.admin.Get(r.Context(), o, r.PathValue("shop"))
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"shop": s})
	return nil
}

func (h *adminAPI) update(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	body, err := httpjson.ReadBody(r, maxSettingsBody)
	if err != nil {
		return err
	}
	p, err := shopadmin.DecodePatch(body)
	if err != nil {
		return err
	}
	s, err := h.admin.Update(r.Context(), o, r.PathValue("shop"), p)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"shop": s})
	return nil
}

func (h *adminAPI) rotateKey(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	body, err := httpjson.ReadBody(r, maxSettingsBody)
	if err != nil {
		return err
	}
	req := struct {
		Overlap shopadmin.Duration `json:"overlap"`
	}{Overlap: shopadmin.Duration(24 * time.Hour)}
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := decodeStrict(body, &req); err != nil {
			return err
		}
	}
	k, err := h.admin.RotateKey(r.Context(), o, r.PathValue("shop"), time.Duration(req.Overlap))
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, k)
	return nil
}

// faqEntry is an FAQ entry in the API.
type faqEntry struct {
	ID        int64     `json:"id"`
	Question  string    `json:"question"`
	Answer    string    `json:"answer"`
	Tags      []string  `json:"tags"`
	UpdatedAt time.Time `json:"updated_at"`
}

func toFAQEntry(e storage.FAQEntry) faqEntry {
	tags := e.Tags
	if tags == nil {
		tags = []string{}
	}
	return faqEntry{ID: e.ID, Question: e.Question, Answer: e.Answer, Tags: tags, UpdatedAt: e.UpdatedAt}
}

func (h *adminAPI) faqList(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	entries, err := h.admin.FAQ(r.Context(), o, r.PathValue("shop"))
	if err != nil {
		return err
	}
	out := make([]faqEntry, len(entries))
	for i, e := range entries {
		out[i] = toFAQEntry(e)
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"entries": out})
	return nil
}

// faqImport takes the file as the body (text/csv or application/json) or
// as the part "file" of a multipart form.
func (h *adminAPI) faqImport(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	replace, _ := strconv.ParseBool(r.URL.Query().Get("replace"))
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var name string
	var file io.Reader
	switch ct {
	case "multipart/form-data":
		r.Body = http.MaxBytesReader(w, r.Body, maxFAQBody)
		f, hdr, err := r.FormFile("file")
		if err != nil {
			return peakdesk.FieldError("file", "send the FAQ as the part \"file\" of the form")
		}
		defer f.Close()
		name, file = hdr.Filename, f
	default:
		body, err := httpjson.ReadBody(r, maxFAQBody)
		if err != nil {
			return err
		}
		name = map[string]string{"application/json": "faq.json", "text/csv": "faq.csv"}[ct]
		file = strings.NewReader(string(body))
	}
	res, err := h.admin.ImportFAQ(r.Context(), o, r.PathValue("shop"), name, file, replace)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]int{"inserted": res.Inserted, "updated": res.Updated,
		"unchanged": res.Unchanged, "deleted": res.Deleted})
	return nil
}

func (h *adminAPI) faqPut(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return peakdesk.Errorf(peakdesk.ENotFound, "FAQ entry not found")
	}
	var req struct {
		Question string   `json:"question"`
		Answer   string   `json:"answer"`
		Tags     []string `json:"tags"`
	}
	if err := httpjson.DecodeObject(r, maxSettingsBody, &req); err != nil {
		return err
	}
	e, err := h.admin.PutFAQ(r.Context(), o, r.PathValue("shop"), storage.FAQEntry{ID: id, Question: req.Question,
		Answer: req.Answer, Tags: req.Tags})
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"entry": toFAQEntry(*e)})
	return nil
}

func (h *adminAPI) faqDelete(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return peakdesk.Errorf(peakdesk.ENotFound, "FAQ entry not found")
	}
	if err := h.admin.DeleteFAQ(r.Context(), o, r.PathValue("shop"), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *adminAPI) faqTest(w http.ResponseWriter, r *http.Request, o shopadmin.Operator) error {
	var req struct {
		Question string `json:"question"`
	}
	if err := httpjson.DecodeObject(r, maxSettingsBody, &req); err != nil {
		return err
	}
	t, err := h.admin.TryFAQ(r.Context(), o, r.PathValue("shop"), req.Question)
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, t)
	return nil
}
