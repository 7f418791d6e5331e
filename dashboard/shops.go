package dashboard

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/shopadmin"
	"github.com/peakdesk/peakdesk/storage"
)

// The shop administration pages (admins only): the shops, one shop's
// settings in one form, its FAQ (upload, edit, delete, try a question).
// Every change goes through shopadmin, which checks, audits and notifies.

// chainRows is how many models the settings form offers.
const chainRows = 4

func (c *Console) shopRoutes(pages *http.ServeMux) {
	pages.Handle("GET "+Prefix+"/shops", c.adminOnly(c.shopsPage))
	pages.Handle("POST "+Prefix+"/shops", c.adminOnly(c.shopCreate))
	pages.Handle("GET "+Prefix+"/shops/{shop}", c.adminOnly(c.shopPage))
	pages.Handle("POST "+Prefix+"/shops/{shop}", c.adminOnly(c.shopSave))
	pages.Handle("GET "+Prefix+"/shops/{shop}/faq", c.adminOnly(c.faqPage))
	pages.Handle("POST "+Prefix+"/shops/{shop}/faq/upload", c.adminOnly(c.faqUpload))
	pages.Handle("POST "+Prefix+"/shops/{shop}/faq/test", c.adminOnly(c.faqTry))
	pages.Handle("GET "+Prefix+"/shops/{shop}/faq/{id}", c.adminOnly(c.faqEntryPage))
	pages.Handle("POST "+Prefix+"/shops/{shop}/faq/{id}", c.adminOnly(c.faqEntrySave))
	pages.Handle("POST "+Prefix+"/shops/{shop}/faq/{id}/delete", c.adminOnly(c.faqEntryDelete))
}

// adminOnly wraps a page for admins: other roles get 403.
func (c *Console) adminOnly(fn pageFunc) http.Handler {
	return c.authed(false, func(w http.ResponseWriter, r *http.Request, rq *request) error {
		if rq.op.Role != storage.RoleAdmin {
			return peakdesk.Errorf(peakdesk.EPermissionDenied, "shop administration is for admins")
		}
		return fn(w, r, rq)
	})
}

// admin is the operator as shop administration knows them.
func (rq *request) admin() shopadmin.Operator {
	return shopadmin.Operator{ID: rq.op.Email, Shop: rq.op.Scope()}
}

type shopsData struct {
	Shops    []storage.ShopSummary
	Platform bool
}

func (c *Console) shopsPage(w http.ResponseWriter, r *http.Request, rq *request) error {
	shops, err := c.admin.List(r.Context(), rq.admin(), "", 500)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "shops", "", "shops.title", "shops",
		&shopsData{Shops: shops, Platform: rq.op.ShopID == ""})
	return nil
}

func (c *Console) shopCreate(w http.ResponseWriter, r *http.Request, rq *request) error {
	id := strings.TrimSpace(r.PostFormValue("id"))
	p := shopadmin.Patch{Language: shopadmin.Some(r.PostFormValue("language"))}
	created, err := c.admin.Create(r.Context(), rq.admin(), id, r.PostFormValue("name"), p)
	if peakdesk.ErrorCode(err) == peakdesk.EInvalid {
		c.flash(r, peakdesk.ErrorMessage(err), true)
		http.Redirect(w, r, Prefix+"/shops", http.StatusSeeOther)
		return nil
	}
	if err != nil {
		return err
	}
	// The generated webhook secret is shown on this page once; it is not
	// kept in the session (which is stored as it is).
	return c.renderShop(w, r, rq, created.Shop, created.WebhookSecret, rq.t("flash.shop_created", id))
}

// shopData is the settings page.
type shopData struct {
	S *shopadmin.Shop
	// Platform: the operator may change limits and admission thresholds.
	Platform bool
	// Rows are the chain's rows of the form (the chain, then blank ones).
	Rows []shopadmin.Model
	// Rules are the keywords by priority, one a line.
	Rules map[string]string
	// Keywords are the handoff keywords, one a line.
	Keywords string
	// Once is a secret shown this one time (a new shop's webhook secret).
	Once   string
	Notice string
}

func (c *Console) shopPage(w http.ResponseWriter, r *http.Request, rq *request) error {
	s, err := c.admin.Get(r.Context(), rq.admin(), r.PathValue("shop"))
	if err != nil {
		return err
	}
	return c.renderShop(w, r, rq, s, "", "")
}

func (c *Console) renderShop(w http.ResponseWriter, r *http.Request, rq *request, s *shopadmin.Shop, once, notice string) error {
	d := &shopData{S: s, Platform: rq.op.ShopID == "", Once: once, Notice: notice, Rules: map[string]string{}}
	d.Rows = append(d.Rows, s.LLM.Chain...)
	for len(d.Rows) < chainRows {
		d.Rows = append(d.Rows, shopadmin.Model{})
	}
	for p, words := range s.Rules {
		d.Rules[p] = strings.Join(words, "\n")
	}
	d.Keywords = strings.Join(s.Handoff.Keywords, "\n")
	c.render(w, r, rq, http.StatusOK, "shop", "", "shop.title", "shops", d)
	return nil
}

func (c *Console) shopSave(w http.ResponseWriter, r *http.Request, rq *request) error {
	shop := r.PathValue("shop")
	if err := r.ParseForm(); err != nil {
		return peakdesk.Errorf(peakdesk.EInvalid, "cannot read the form")
	}
	p, err := formPatch(r.PostForm)
	if err == nil {
		_, err = c.admin.Update(r.Context(), rq.admin(), shop, p)
	}
	switch peakdesk.ErrorCode(err) {
	case "":
		c.flash(r, rq.t("flash.shop_saved"), false)
	case peakdesk.EInvalid, peakdesk.EPermissionDenied:
		c.flash(r, peakdesk.ErrorMessage(err), true)
	default:
		return err
	}
	http.Redirect(w, r, Prefix+"/shops/"+url.PathEscape(shop), http.StatusSeeOther)
	return nil
}

// formPatch reads the settings form into a Patch. A field the form does not
// carry (a disabled input) stays as it is; an empty number or duration is
// the default; an empty secret keeps the stored one unless its "clear" box
// is ticked.
func formPatch(f url.Values) (shopadmin.Patch, error) {
	var p shopadmin.Patch
	r := formReader{f: f}
	r.str("name", &p.Name)
	r.str("language", &p.Language)
	r.str("currency", &p.Currency)
	r.int("retention_days", &p.RetentionDays)

	r.int("limits.rate_per_second", &p.Limits.RatePerSecond)
	r.int("limits.rate_burst", &p.Limits.RateBurst)
	r.int("limits.user_rate_per_minute", &p.Limits.UserRatePerMinute)
	r.int("limits.user_rate_burst", &p.Limits.UserRateBurst)
	r.int("limits.read_per_user_per_minute", &p.Limits.ReadPerUserPerMinute)
	r.int("limits.sse_streams_per_user", &p.Limits.SSEStreamsPerUser)
	r.int("limits.p0_per_user_per_hour", &p.Limits.P0PerUserPerHour)
	r.dur("admission.max_wait_p0", &p.Admission.MaxWaitP0)
	r.dur("admission.max_wait_p1", &p.Admission.MaxWaitP1)
	r.dur("admission.max_wait_p2", &p.Admission.MaxWaitP2)
	r.int("admission.min_backlog", &p.Admission.MinBacklog)

	if _, ok := f["rules.p0"]; ok {
		rules := shopadmin.Rules{}
		for _, prio := range []string{"p0", "p1", "p2"} {
			rules[prio] = strings.FieldsFunc(f.Get("rules."+prio), func(r rune) bool {
				return r == '\n' || r == '\r' || r == ',' || r == '，'
			})
		}
		p.Rules = shopadmin.Some(rules)
	}

	r.str("llm.base_url", &p.LLM.BaseURL)
	r.secret("llm.api_key", &p.LLM.APIKey)
	r.str("llm.system_prompt", &p.LLM.SystemPrompt)
	r.float("llm.temperature", &p.LLM.Temperature)
	r.int("llm.max_tokens", &p.LLM.MaxTokens)
	if _, ok := f["llm.chain.model.0"]; ok {
		var chain []shopadmin.ModelPatch
		for i := range chainRows {
			n := strconv.Itoa(i)
			m := shopadmin.ModelPatch{Model: strings.TrimSpace(f.Get("llm.chain.model." + n)),
				BaseURL: strings.TrimSpace(f.Get("llm.chain.base_url." + n))}
			if m.Model == "" {
				continue
			}
			r.secret("llm.chain.api_key."+n, &m.APIKey)
			chain = append(chain, m)
		}
		p.LLM.Chain = shopadmin.Some(chain)
	}

	r.str("shop_api.base_url", &p.ShopAPI.BaseURL)
	r.secret("shop_api.secret", &p.ShopAPI.Secret)
	r.str("webhook.url", &p.Webhook.URL)
	if v := strings.TrimSpace(f.Get("webhook.secret")); v != "" {
		p.Webhook.Secret = shopadmin.Some(v)
	}

	r.int("money.coupon_per_user_per_day", &p.Money.CouponPerUserPerDay)
	r.int64("money.coupon_budget_per_day_cents", &p.Money.CouponBudgetPerDayCents)
	r.int64("money.coupon_max_cents", &p.Money.CouponMaxCents)
	r.int64("money.refund_max_cents", &p.Money.RefundMaxCents)
	r.int64("money.llm_spend_cap_per_day_cents", &p.Money.LLMSpendCapPerDayCents)
	r.int("money.llm_calls_per_user_per_hour", &p.Money.LLMCallsPerUserPerHour)

	r.dur("handoff.sla", &p.Handoff.SLA)
	if v, ok := f["handoff.keywords"]; ok && len(v) > 0 {
		p.Handoff.Keywords = shopadmin.Some(strings.FieldsFunc(v[0], func(r rune) bool {
			return r == '\n' || r == '\r' || r == ',' || r == '，'
		}))
	}
	r.str("order_answers", &p.OrderAnswers)
	return p, r.err
}

// formReader reads form fields into Opts, keeping the first error.
type formReader struct {
	f   url.Values
	err error
}

func (r *formReader) get(key string) (string, bool) {
	v, ok := r.f[key]
	if !ok || len(v) == 0 {
		return "", false
	}
	return strings.TrimSpace(v[0]), true
}

func (r *formReader) str(key string, dst *shopadmin.Opt[string]) {
	if v, ok := r.get(key); ok {
		*dst = shopadmin.Some(v)
	}
}

func (r *formReader) secret(key string, dst *shopadmin.Opt[string]) {
	v, _ := r.get(key)
	switch {
	case v != "":
		*dst = shopadmin.Some(v)
	case r.f.Get(key+".clear") != "":
		*dst = shopadmin.Null[string]()
	}
}

func optOf[T any](r *formReader, key string, dst *shopadmin.Opt[T], parse func(string) (T, error)) {
	v, ok := r.get(key)
	switch {
	case !ok:
	case v == "":
		*dst = shopadmin.Null[T]()
	default:
		x, err := parse(v)
		if err != nil {
			if r.err == nil {
				r.err = peakdesk.FieldError(key, "%s: %q is not a valid value", key, v)
			}
			return
		}
		*dst = shopadmin.Some(x)
	}
}

func (r *formReader) int(key string, dst *shopadmin.Opt[int]) { optOf(r, key, dst, strconv.Atoi) }

func (r *formReader) int64(key string, dst *shopadmin.Opt[int64]) {
	optOf(r, key, dst, func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) })
}

func (r *formReader) float(key string, dst *shopadmin.Opt[float64]) {
	optOf(r, key, dst, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) })
}

func (r *formReader) dur(key string, dst *shopadmin.Opt[shopadmin.Duration]) {
	optOf(r, key, dst, func(s string) (shopadmin.Duration, error) {
		d, err := time.ParseDuration(s)
		return shopadmin.Duration(d), err
	})
}

// --- FAQ ----------------------------------------------------------------------

type faqData struct {
	Shop    string
	Entries []storage.FAQEntry
	Trial   *shopadmin.Trial
}

func (c *Console) faqPage(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.renderFAQ(w, r, rq, r.PathValue("shop"), nil)
}

func (c *Console) renderFAQ(w http.ResponseWriter, r *http.Request, rq *request, shop string, t *shopadmin.Trial) error {
	entries, err := c.admin.FAQ(r.Context(), rq.admin(), shop)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "shop_faq", "", "faq.title", "shops", &faqData{Shop: shop, Entries: entries, Trial: t})
	return nil
}

func (c *Console) faqUpload(w http.ResponseWriter, r *http.Request, rq *request) error {
	shop := r.PathValue("shop")
	back := Prefix + "/shops/" + url.PathEscape(shop) + "/faq"
	r.Body = http.MaxBytesReader(w, r.Body, maxFAQBody)
	f, hdr, err := r.FormFile("file")
	if err != nil {
		c.flash(r, rq.t("faq.nofile"), true)
		http.Redirect(w, r, back, http.StatusSeeOther)
		return nil
	}
	defer f.Close()
	res, err := c.admin.ImportFAQ(r.Context(), rq.admin(), shop, hdr.Filename, f, r.FormValue("replace") != "")
	switch peakdesk.ErrorCode(err) {
	case "":
		c.flash(r, rq.t("flash.faq_imported", res.Inserted, res.Updated, res.Unchanged, res.Deleted), false)
	case peakdesk.EInvalid:
		c.flash(r, peakdesk.ErrorMessage(err), true)
	default:
		return err
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
	return nil
}

func (c *Console) faqTry(w http.ResponseWriter, r *http.Request, rq *request) error {
	shop := r.PathValue("shop")
	t, err := c.admin.TryFAQ(r.Context(), rq.admin(), shop, r.PostFormValue("question"))
	if peakdesk.ErrorCode(err) == peakdesk.EInvalid {
		c.flash(r, peakdesk.ErrorMessage(err), true)
		http.Redirect(w, r, Prefix+"/shops/"+url.PathEscape(shop)+"/faq", http.StatusSeeOther)
		return nil
	}
	if err != nil {
		return err
	}
	return c.renderFAQ(w, r, rq, shop, t)
}

func (c *Console) faqEntry(ctx context.Context, rq *request, shop, idText string) (*storage.FAQEntry, error) {
	id, err := strconv.ParseInt(idText, 10, 64)
	if err != nil || id <= 0 {
		return nil, peakdesk.Errorf(peakdesk.ENotFound, "FAQ entry not found")
	}
	entries, err := c.admin.FAQ(ctx, rq.admin(), shop)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.ID == id {
			return &e, nil
		}
	}
	return nil, peakdesk.Errorf(peakdesk.ENotFound, "FAQ entry not found")
}

func (c *Console) faqEntryPage(w http.ResponseWriter, r *http.Request, rq *request) error {
	e, err := c.faqEntry(r.Context(), rq, r.PathValue("shop"), r.PathValue("id"))
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "shop_faq_entry", "", "faq.edit", "shops", map[string]any{
		"Shop": r.PathValue("shop"), "E": e, "Tags": strings.Join(e.Tags, ", ")})
	return nil
}

func (c *Console) faqEntrySave(w http.ResponseWriter, r *http.Request, rq *request) error {
	shop := r.PathValue("shop")
	e, err := c.faqEntry(r.Context(), rq, shop, r.PathValue("id"))
	if err != nil {
		return err
	}
	tags := strings.FieldsFunc(r.PostFormValue("tags"), func(r rune) bool { return r == ',' || r == '，' || r == '|' })
	_, err = c.admin.PutFAQ(r.Context(), rq.admin(), shop, storage.FAQEntry{ID: e.ID,
		Question: r.PostFormValue("question"), Answer: r.PostFormValue("answer"), Tags: tags})
	back := Prefix + "/shops/" + url.PathEscape(shop) + "/faq"
	switch peakdesk.ErrorCode(err) {
	case "":
		c.flash(r, rq.t("flash.faq_saved"), false)
	case peakdesk.EInvalid:
		c.flash(r, peakdesk.ErrorMessage(err), true)
		back += "/" + strconv.FormatInt(e.ID, 10)
	default:
		return err
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
	return nil
}

func (c *Console) faqEntryDelete(w http.ResponseWriter, r *http.Request, rq *request) error {
	shop := r.PathValue("shop")
	e, err := c.faqEntry(r.Context(), rq, shop, r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := c.admin.DeleteFAQ(r.Context(), rq.admin(), shop, e.ID); err != nil {
		return err
	}
	c.flash(r, rq.t("flash.faq_deleted"), false)
	http.Redirect(w, r, Prefix+"/shops/"+url.PathEscape(shop)+"/faq", http.StatusSeeOther)
	return nil
}
