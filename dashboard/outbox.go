package dashboard

import (
	"context"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// The outbox pages: a filtered, searchable, keyset-paged list; an action
// with every attempt; retry and cancel; and bulk retry or cancel of every
// match of a filter, after a confirmation that states the count.

// pageSize is how many rows a list page shows.
const pageSize = 50

// timeForm is the format of datetime-local inputs, read in the shops' day
// zone.
const timeForm = "2006-01-02T15:04"

// filterForm is an outbox filter as the form shows it.
type filterForm struct {
	State, Kind, Shop, Q, From, To string
}

// readFilter reads an outbox filter from the query or form of r, within
// the operator's shop.
func readFilter(r *http.Request, rq *request) (filterForm, storage.ActionFilter, error) {
	get := func(k string) string { return strings.TrimSpace(r.FormValue(k)) }
	ff := filterForm{State: get("state"), Kind: get("kind"), Shop: get("shop"), Q: get("q"), From: get("from"), To: get("to")}
	if rq.op.ShopID != "" {
		ff.Shop = ""
	}
	f := storage.ActionFilter{State: peakdesk.ActionState(ff.State), Kind: peakdesk.ActionKind(ff.Kind), Shop: ff.Shop, Q: ff.Q}
	for _, t := range []struct {
		field string
		in    string
		out   *time.Time
	}{{"from", ff.From, &f.From}, {"to", ff.To, &f.To}} {
		if t.in == "" {
			continue
		}
		v, err := time.ParseInLocation(timeForm, t.in, storage.ShopDay)
		if err != nil {
			return ff, f, peakdesk.FieldError(t.field, "%s must be a date and time like 2025-11-11T00:00", t.field)
		}
		*t.out = v
	}
	return ff, f, nil
}

// query encodes ff for links (no cursor).
func (ff filterForm) query() string {
	v := url.Values{}
	for k, s := range map[string]string{"state": ff.State, "kind": ff.Kind, "shop": ff.Shop, "q": ff.Q, "from": ff.From, "to": ff.To} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v.Encode()
}

// describe spells the filter out for a confirmation.
func (ff filterForm) describe(rq *request) string {
	var parts []string
	for _, p := range []struct{ k, v string }{{"state", ff.State}, {"kind", ff.Kind}, {"shop", ff.Shop},
		{"q", ff.Q}, {"from", ff.From}, {"to", ff.To}} {
		if p.v != "" {
			parts = append(parts, p.k+"="+strconv.Quote(p.v))
		}
	}
	return rq.t("filter.desc", strings.Join(parts, ", "))
}

type outboxData struct {
	F      filterForm
	States []peakdesk.ActionState
	Kinds  []peakdesk.ActionKind
	Page   *outbox.ActionPage
	Query  template.URL // the filter as a query string, for links
	Cursor string
	Empty  bool
}

func (c *Console) outboxList(w http.ResponseWriter, r *http.Request, rq *request) error {
	ff, f, err := readFilter(r, rq)
	if err != nil {
		return err
	}
	cursor := r.FormValue("cursor")
	page, err := c.ops.List(r.Context(), rq.who(), f, cursor, pageSize)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "outbox", "", "outbox.title", "outbox", &outboxData{
		F: ff, States: peakdesk.ActionStates, Kinds: peakdesk.ActionKinds, Page: page,
		Query: template.URL(ff.query()), Cursor: cursor, Empty: f.Empty(),
	})
	return nil
}

func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, peakdesk.Errorf(peakdesk.ENotFound, "not found")
	}
	return id, nil
}

type actionData struct {
	D                   *outbox.ActionDetail
	CanRetry, CanCancel bool
}

func (c *Console) actionPage(w http.ResponseWriter, r *http.Request, rq *request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	d, err := c.ops.Get(r.Context(), rq.who(), id)
	if err != nil {
		return err
	}
	s := d.Action.State
	data := &actionData{D: d,
		CanRetry:  s == peakdesk.ActionPending || s == peakdesk.ActionRetrying || s == peakdesk.ActionDead || s == peakdesk.ActionCanceled,
		CanCancel: s == peakdesk.ActionPending || s == peakdesk.ActionRetrying || s == peakdesk.ActionDead,
	}
	fragment := ""
	if r.URL.Query().Get("fragment") != "" {
		fragment = "detail"
	}
	c.render(w, r, rq, http.StatusOK, "action", fragment, "action.title", "outbox", data)
	return nil
}

func (c *Console) actionRetry(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.actionChange(w, r, rq, c.ops.Retry, "flash.retried")
}

func (c *Console) actionCancel(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.actionChange(w, r, rq, c.ops.Cancel, "flash.canceled")
}

func (c *Console) actionChange(w http.ResponseWriter, r *http.Request, rq *request,
	fn func(ctx context.Context, op outbox.Operator, id int64) (*peakdesk.Action, error), done string) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	if _, err := fn(r.Context(), rq.who(), id); err != nil {
		if peakdesk.ErrorCode(err) != peakdesk.EInvalid {
			return err
		}
		c.flash(r, peakdesk.ErrorMessage(err), true)
	} else {
		c.flash(r, rq.t(done, id), false)
	}
	http.Redirect(w, r, Prefix+"/outbox/"+strconv.FormatInt(id, 10), http.StatusSeeOther)
	return nil
}

// bulkStates are the states a bulk operation acts on (the others it leaves
// alone), for the count it confirms.
func bulkStates(op string) []peakdesk.ActionState {
	if op == outbox.BulkCancel {
		return []peakdesk.ActionState{peakdesk.ActionPending, peakdesk.ActionRetrying, peakdesk.ActionDead}
	}
	return []peakdesk.ActionState{peakdesk.ActionPending, peakdesk.ActionRetrying, peakdesk.ActionDead, peakdesk.ActionCanceled}
}

type hidden struct{ Name, Value string }

type confirmData struct {
	Question, Filter, Button, Action, Back string
	Danger                                 bool
	Count                                  int64
	Hidden                                 []hidden
}

func readBulkOp(r *http.Request) (string, error) {
	switch op := r.FormValue("op"); op {
	case outbox.BulkRetry, outbox.BulkCancel:
		return op, nil
	}
	return "", peakdesk.FieldError("op", "op must be retry or cancel")
}

// outboxBulkConfirm counts what a bulk operation would change and asks.
func (c *Console) outboxBulkConfirm(w http.ResponseWriter, r *http.Request, rq *request) error {
	op, err := readBulkOp(r)
	if err != nil {
		return err
	}
	ff, f, err := readFilter(r, rq)
	if err != nil {
		return err
	}
	if f.Empty() {
		return peakdesk.FieldError("filter", "choose a filter first: a bulk operation never acts on everything")
	}
	n, err := c.cfg.DB.CountActions(r.Context(), rq.op.Scope(), f, bulkStates(op))
	if err != nil {
		return err
	}
	what := strings.TrimSpace(strings.Join([]string{stateWord(rq, ff.State), ff.Kind}, " "))
	d := &confirmData{
		Question: rq.t("bulk.q."+op, num(n), what), Filter: ff.describe(rq),
		Button: rq.t("bulk.b."+op, num(n)), Action: Prefix + "/outbox/bulk", Back: Prefix + "/outbox?" + ff.query(),
		Danger: op == outbox.BulkCancel, Count: n,
		Hidden: []hidden{{"op", op}, {"state", ff.State}, {"kind", ff.Kind}, {"shop", ff.Shop}, {"q", ff.Q},
			{"from", ff.From}, {"to", ff.To}},
	}
	if n == 0 {
		d.Question = rq.t("bulk.nothing")
	}
	c.render(w, r, rq, http.StatusOK, "bulk_confirm", "", "bulk.title", "outbox", d)
	return nil
}

func stateWord(rq *request, state string) string {
	if state == "" {
		return ""
	}
	return rq.t("state." + state)
}

type doneData struct {
	Result, Back, ProgressURL string
	Counts                    []namedValue
	Settled                   bool
}

// outboxBulk acts on every match of the filter and shows how many it
// changed, then how those actions get on.
func (c *Console) outboxBulk(w http.ResponseWriter, r *http.Request, rq *request) error {
	op, err := readBulkOp(r)
	if err != nil {
		return err
	}
	ff, f, err := readFilter(r, rq)
	if err != nil {
		return err
	}
	res, err := c.ops.Bulk(r.Context(), rq.who(), f, op)
	if err != nil {
		if errors.Is(err, storage.ErrActionState) {
			return peakdesk.FieldError("filter",
				"two of the matching coupons or refunds are for the same order; retry them one by one")
		}
		return err
	}
	d := &doneData{Result: rq.t("bulk.done."+op, num(res.Affected)), Back: Prefix + "/outbox?" + ff.query(),
		ProgressURL: Prefix + "/outbox/progress?bulk=" + strconv.FormatInt(res.ID, 10)}
	if err := c.fillProgress(r, rq, res.ID, d); err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "bulk_done", "", "bulk.title", "outbox", d)
	return nil
}

// fillProgress counts the actions bulk operation id changed, by state.
func (c *Console) fillProgress(r *http.Request, rq *request, id int64, d *doneData) error {
	p, err := c.ops.BulkProgress(r.Context(), rq.who(), id)
	if err != nil {
		return err
	}
	d.Counts = d.Counts[:0]
	for _, s := range peakdesk.ActionStates {
		d.Counts = append(d.Counts, namedValue{Name: string(s), Value: float64(p.States[s])})
	}
	d.Settled = p.Settled
	return nil
}

// outboxProgress is the live progress panel of a bulk operation.
func (c *Console) outboxProgress(w http.ResponseWriter, r *http.Request, rq *request) error {
	id, err := strconv.ParseInt(r.FormValue("bulk"), 10, 64)
	if err != nil || id <= 0 {
		return peakdesk.Errorf(peakdesk.ENotFound, "bulk operation not found")
	}
	d := &doneData{ProgressURL: Prefix + "/outbox/progress?bulk=" + strconv.FormatInt(id, 10)}
	if err := c.fillProgress(r, rq, id, d); err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "bulk_done", "progress", "bulk.title", "outbox", d)
	return nil
}
