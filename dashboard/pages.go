package dashboard

import (
	"context"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// --- chat dead letters ------------------------------------------------------------

var dlqStates = []string{storage.DLQDead, storage.DLQRedriven, storage.DLQDiscarded}

type dlqData struct {
	F      outbox.DLQFilter
	States []string
	Page   *outbox.DLQPage
	Query  template.URL
	Dead   int64
}

// readDLQFilter reads the dead-letter filter; no state parameter at all
// means the dead ones, which are what needs attention.
func readDLQFilter(r *http.Request, rq *request) (outbox.DLQFilter, string) {
	f := outbox.DLQFilter{State: strings.TrimSpace(r.FormValue("state")), Shop: strings.TrimSpace(r.FormValue("shop"))}
	if _, ok := r.Form["state"]; !ok {
		f.State = storage.DLQDead
	}
	if rq.op.ShopID != "" {
		f.Shop = ""
	}
	v := url.Values{"state": {f.State}}
	if f.Shop != "" {
		v.Set("shop", f.Shop)
	}
	return f, v.Encode()
}

func (c *Console) dlqList(w http.ResponseWriter, r *http.Request, rq *request) error {
	_ = r.ParseForm()
	f, query := readDLQFilter(r, rq)
	page, err := c.dlq.List(r.Context(), rq.who(), f, r.FormValue("cursor"), pageSize)
	if err != nil {
		return err
	}
	dead, err := c.dlq.Count(r.Context(), rq.who(), outbox.DLQFilter{Shop: f.Shop, State: storage.DLQDead})
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "dlq", "", "dlq.title", "dlq",
		&dlqData{F: f, States: dlqStates, Page: page, Query: template.URL(query), Dead: dead})
	return nil
}

func (c *Console) dlqEntry(w http.ResponseWriter, r *http.Request, rq *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	e, err := c.dlq.Get(r.Context(), rq.who(), id)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "dlq_entry", "", "dlq.entry", "dlq", map[string]any{"E": e})
	return nil
}

func (c *Console) dlqRedrive(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.dlqChange(w, r, rq, c.dlq.Redrive, "flash.redriven")
}

func (c *Console) dlqDiscard(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.dlqChange(w, r, rq, c.dlq.Discard, "flash.discarded")
}

func (c *Console) dlqChange(w http.ResponseWriter, r *http.Request, rq *request,
	fn func(context.Context, outbox.Operator, int64) (*storage.DLQEntry, error), done string) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	switch _, err := fn(r.Context(), rq.who(), id); peakdesk.ErrorCode(err) {
	case "":
		c.flash(r, rq.t(done, id), false)
	case peakdesk.EInvalid, peakdesk.EOverloaded:
		c.flash(r, peakdesk.ErrorMessage(err), true)
	default:
		return err
	}
	back := Prefix + "/dlq/" + strconv.FormatInt(id, 10)
	if ref, err := url.Parse(r.Referer()); err == nil && ref.Path == Prefix+"/dlq" {
		back = ref.RequestURI()
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
	return nil
}

func readDLQBulkOp(r *http.Request) (string, error) {
	switch op := r.FormValue("op"); op {
	case "redrive", "discard":
		return op, nil
	}
	return "", peakdesk.FieldError("op", "op must be redrive or discard")
}

func (c *Console) dlqBulkConfirm(w http.ResponseWriter, r *http.Request, rq *request) error {
	op, err := readDLQBulkOp(r)
	if err != nil {
		return err
	}
	f, _ := readDLQFilter(r, rq)
	n, err := c.dlq.Count(r.Context(), rq.who(), outbox.DLQFilter{Shop: f.Shop, State: storage.DLQDead})
	if err != nil {
		return err
	}
	ofShop := ""
	if f.Shop != "" {
		ofShop = rq.t("dlq.ofshop", f.Shop)
	}
	d := &confirmData{Question: rq.t("dlq.q."+op, num(n), ofShop), Button: rq.t("dlq.b."+op, num(n)),
		Action: Prefix + "/dlq/bulk", Back: Prefix + "/dlq", Danger: op == "discard", Count: n,
		Hidden: []hidden{{"op", op}, {"shop", f.Shop}}}
	c.render(w, r, rq, http.StatusOK, "bulk_confirm", "", "bulk.title", "dlq", d)
	return nil
}

func (c *Console) dlqBulk(w http.ResponseWriter, r *http.Request, rq *request) error {
	op, err := readDLQBulkOp(r)
	if err != nil {
		return err
	}
	f, _ := readDLQFilter(r, rq)
	n, err := c.dlq.Bulk(r.Context(), rq.who(), outbox.DLQFilter{Shop: f.Shop}, op)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "bulk_done", "", "bulk.title", "dlq",
		&doneData{Result: rq.t("dlq.done."+op, num(n)), Back: Prefix + "/dlq"})
	return nil
}

// --- conversations ------------------------------------------------------------------

func (c *Console) conversations(w http.ResponseWriter, r *http.Request, rq *request) error {
	q := strings.TrimSpace(r.FormValue("q"))
	var found []storage.ConversationSummary
	if q != "" {
		if len(q) > 200 {
			return peakdesk.FieldError("q", "q is too long")
		}
		var err error
		if found, err = c.cfg.DB.FindConversations(r.Context(), rq.op.Scope(), q, pageSize); err != nil {
			return err
		}
		if len(found) == 1 {
			http.Redirect(w, r, Prefix+"/conversations/"+found[0].ID, http.StatusSeeOther)
			return nil
		}
	}
	c.render(w, r, rq, http.StatusOK, "conversations", "", "conv.title", "conversations",
		map[string]any{"Q": q, "Found": found})
	return nil
}

// timelineItem is one entry of a conversation's timeline.
type timelineItem struct {
	at      time.Time
	Message *storage.TimelineMessage
	Reply   *peakdesk.Reply
	Action  *storage.TimelineAction
}

type conversationData struct {
	TL     *storage.Timeline
	Items  []timelineItem
	Tokens int
	Cost   int64
}

// timelineLimit bounds the messages and replies one page shows.
const timelineLimit = 500

func (c *Console) conversation(w http.ResponseWriter, r *http.Request, rq *request) error {
	tl, err := c.cfg.DB.ConversationTimeline(r.Context(), rq.op.Scope(), r.PathValue("id"), timelineLimit)
	if err == storage.ErrNotFound {
		return peakdesk.Errorf(peakdesk.ENotFound, "conversation not found")
	}
	if err != nil {
		return err
	}
	d := &conversationData{TL: tl}
	for i := range tl.Messages {
		d.Items = append(d.Items, timelineItem{at: tl.Messages[i].AcceptedAt, Message: &tl.Messages[i]})
	}
	for i := range tl.Replies {
		rp := &tl.Replies[i]
		d.Items = append(d.Items, timelineItem{at: rp.CreatedAt, Reply: rp})
		d.Tokens += rp.PromptTokens + rp.CompletionTokens
		d.Cost += rp.CostMicroUSD
	}
	for i := range tl.Actions {
		d.Items = append(d.Items, timelineItem{at: tl.Actions[i].CreatedAt, Action: &tl.Actions[i]})
	}
	sort.SliceStable(d.Items, func(i, j int) bool { return d.Items[i].at.Before(d.Items[j].at) })
	c.render(w, r, rq, http.StatusOK, "conversation", "", "conv.one", "conversations", d)
	return nil
}

// --- audit log ------------------------------------------------------------------------

func (c *Console) audit(w http.ResponseWriter, r *http.Request, rq *request) error {
	before, _ := strconv.ParseInt(r.FormValue("before"), 10, 64)
	entries, err := c.cfg.DB.AuditLog(r.Context(), rq.op.Scope(), max(before, 0), pageSize)
	if err != nil {
		return err
	}
	var next int64
	if len(entries) == pageSize {
		next = entries[len(entries)-1].ID
	}
	c.render(w, r, rq, http.StatusOK, "audit", "", "audit.title", "audit", map[string]any{"Entries": entries, "Next": next})
	return nil
}
