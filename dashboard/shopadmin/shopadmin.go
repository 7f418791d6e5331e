// Package shopadmin is shop administration (docs/integration.md), the one layer
// the admin JSON API, the console's shop pages and `peakdesk shop` go
// through: creating a shop; its request limits, keyword rules, admission
// thresholds, language, LLM chain (each model with its own provider),
// shop API and webhook, money policies; its FAQ; its signing keys.
//
// Every change is checked first (ranges, https and public addresses for
// every URL — the SSRF rules of outbox/egress), then written in one
// transaction with its audit record, which names the fields that changed
// and never a secret's value. Secrets are sealed at rest by storage and
// shown back masked (their last four characters). A written change
// notifies every process (storage/shopwatch), which applies it at once.
//
// Platform admins (shop scope "*") administer every shop and create shops;
// a shop's own admin administers that shop, except its request limits and
// admission thresholds, which share the desk among shops.
package shopadmin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox/egress"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/faq"
)

// Config configures an Admin. DB is required.
type Config struct {
	DB *storage.DB
	// AllowPrivateURLs lets shop and LLM URLs use plain http and name
	// private addresses (PEAKDESK_ALLOW_PRIVATE_SHOP_URLS): development and
	// tests only.
	AllowPrivateURLs bool
	// FAQThreshold is the confidence at which the FAQ answers on its own,
	// as the workers use it. Default faq.DefaultThreshold.
	FAQThreshold float64
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Admin administers shops. It is safe for concurrent use.
type Admin struct {
	cfg Config
	log *slog.Logger
}

// New returns an Admin for cfg.
func New(cfg Config) (*Admin, error) {
	if cfg.DB == nil {
		return nil, errors.New("shopadmin: config: DB is required")
	}
	cfg.FAQThreshold = cmp.Or(cfg.FAQThreshold, faq.DefaultThreshold)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	return &Admin{cfg: cfg, log: cfg.Logger.With("component", "shopadmin")}, nil
}

// Operator is who administers: ID names them in the audit log (an e-mail
// address, a token's subject); Shop is their scope, a shop id or "*".
type Operator struct {
	ID, Shop string
}

func (o Operator) platform() bool { return o.Shop == storage.AllShops }

// may checks that o may administer shop.
func (o Operator) may(shop string) error {
	if o.platform() || o.Shop == shop {
		return nil
	}
	// Another shop's settings are none of this operator's business: as if
	// the shop did not exist.
	return peakdesk.Errorf(peakdesk.ENotFound, "shop not found")
}

// checkURL applies the SSRF rules to a URL an admin gives.
func (a *Admin) checkURL(field, url string) error {
	if err := egress.CheckURL(url, a.cfg.AllowPrivateURLs); err != nil {
		return peakdesk.FieldError(field, "%s: %v", field, err)
	}
	return nil
}

// List returns the shops o may administer, in id order, up to limit (at
// most 500) after the id after.
func (a *Admin) List(ctx context.Context, o Operator, after string, limit int) ([]storage.ShopSummary, error) {
	if !o.platform() {
		c, err := a.cfg.DB.ShopConfig(ctx, o.Shop)
		if err != nil || after >= o.Shop {
			return nil, ignoreNotFound(err)
		}
		return []storage.ShopSummary{{ID: c.ID, Name: c.Name, Language: c.Language, Currency: c.Currency,
			CreatedAt: c.CreatedAt}}, nil
	}
	if limit <= 0 || limit > 500 {
		limit = 500
	}
	return a.cfg.DB.Shops(ctx, after, limit)
}

func ignoreNotFound(err error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	return err
}

// Get returns shop's settings, secrets masked.
func (a *Admin) Get(ctx context.Context, o Operator, shop string) (*Shop, error) {
	if err := o.may(shop); err != nil {
		return nil, err
	}
	c, err := a.cfg.DB.ShopConfig(ctx, shop)
	if err != nil {
		return nil, err
	}
	return view(c), nil
}

// Created is a new shop and what is shown of it only once.
type Created struct {
	Shop *Shop `json:"shop"`
	// WebhookSecret signs the shop's reply webhooks. Generated unless the
	// request gave one; shown here once, never again (give it to the shop,
	// which verifies the signatures with it).
	WebhookSecret string `json:"webhook_secret,omitempty"`
}

// Create makes shop id with name and the settings of p (defaults for the
// rest). Only platform admins create shops.
func (a *Admin) Create(ctx context.Context, o Operator, id, name string, p Patch) (*Created, error) {
	if !o.platform() {
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied, "only platform admins create shops")
	}
	if !peakdesk.ValidShopID(id) {
		return nil, peakdesk.FieldError("id", "a shop id is 1..64 of A-Z a-z 0-9 _ -")
	}
	c := defaults(id, cmp.Or(strings.TrimSpace(name), id))
	if err := p.apply(c, a.checkURL); err != nil {
		return nil, err
	}
	given := c.API.WebhookSecret != ""
	after := view(c)
	details, _ := json.Marshal(map[string]any{"settings": changes(view(defaults(id, id)), after)})
	if err := a.cfg.DB.CreateShop(ctx, c, &storage.AuditEntry{Actor: o.ID, Scope: o.Shop, Shop: id,
		Action: "shop.create", Target: "shop:" + id, Details: details}); err != nil {
		return nil, err
	}
	a.log.InfoContext(ctx, "shop created", "shop", id, "operator", o.ID)
	res := &Created{Shop: view(c)}
	if !given {
		res.WebhookSecret = c.API.WebhookSecret
	}
	return res, nil
}

// defaults is a new shop's configuration before any setting.
func defaults(id, name string) *storage.ShopConfig {
	calls := storage.DefaultLLMCallsPerUserHour
	return &storage.ShopConfig{ID: id, Name: name, Language: "zh", Currency: storage.DefaultCurrency,
		RetentionDays: storage.DefaultRetentionDays, Edge: storage.DefaultEdgeLimits,
		LLM:          storage.LLMSettings{ShopID: id},
		LLMLimits:    storage.LLMLimits{ShopID: id, MaxTokens: storage.DefaultLLMMaxTokens, CallsPerUserPerHour: &calls},
		API:          storage.ShopAPISettings{ShopID: id},
		Coupons:      storage.CouponPolicy{PerUserPerDay: 1, BudgetPerDayCents: 50_000},
		Takeover:     storage.TakeoverSettings{SLA: storage.DefaultHandoffSLA, Keywords: []string{}},
		OrderAnswers: storage.OrderAnswersLLM}
}

// Update changes shop's settings by p, in one transaction with its audit
// record. A patch that changes nothing writes nothing.
func (a *Admin) Update(ctx context.Context, o Operator, shop string, p Patch) (*Shop, error) {
	if err := o.may(shop); err != nil {
		return nil, err
	}
	if !o.platform() && p.touchesPlatform() {
		return nil, peakdesk.Errorf(peakdesk.EPermissionDenied,
			"request limits and admission thresholds are set by platform admins")
	}
	var changed map[string]any
	c, err := a.cfg.DB.UpdateShop(ctx, shop, func(c *storage.ShopConfig) (*storage.AuditEntry, error) {
		before := view(c)
		if err := p.apply(c, a.checkURL); err != nil {
			return nil, err
		}
		if changed = changes(before, view(c)); len(changed) == 0 {
			return nil, nil
		}
		details, _ := json.Marshal(map[string]any{"changed": changed})
		return &storage.AuditEntry{Actor: o.ID, Scope: o.Shop, Shop: shop, Action: "shop.update",
			Target: "shop:" + shop, Details: details}, nil
	})
	if err != nil {
		return nil, err
	}
	if len(changed) > 0 {
		fields := make([]string, 0, len(changed))
		for f := range changed {
			fields = append(fields, f)
		}
		a.log.InfoContext(ctx, "shop settings changed", "shop", shop, "operator", o.ID, "fields", fields)
	}
	return view(c), nil
}

// RotatedKey is a shop's new token-signing key, shown once.
type RotatedKey struct {
	KID string `json:"kid"`
	// Secret is the key's HMAC secret, for the shop's backend that mints
	// its customers' tokens. Shown once.
	Secret string `json:"secret"`
	// OlderKeysExpire is when tokens signed with the shop's older keys stop
	// working.
	OlderKeysExpire time.Time `json:"older_keys_expire"`
}

// RotateKey gives shop a new signing key; its older keys stay valid for
// overlap.
func (a *Admin) RotateKey(ctx context.Context, o Operator, shop string, overlap time.Duration) (*RotatedKey, error) {
	if err := o.may(shop); err != nil {
		return nil, err
	}
	if overlap < 0 || overlap > 30*24*time.Hour {
		return nil, peakdesk.FieldError("overlap", "must be within 0..720h")
	}
	k, err := token.RotateShopKey(ctx, a.cfg.DB, shop, overlap)
	if err != nil {
		return nil, err
	}
	details, _ := json.Marshal(map[string]any{"kid": k.KID, "overlap": overlap.String()})
	if err := a.cfg.DB.Audit(ctx, &storage.AuditEntry{Actor: o.ID, Scope: o.Shop, Shop: shop,
		Action: "shop.rotate_key", Target: "shop:" + shop, Details: details}); err != nil {
		return nil, err
	}
	a.log.InfoContext(ctx, "shop signing key rotated", "shop", shop, "kid", k.KID, "operator", o.ID)
	return &RotatedKey{KID: k.KID, Secret: k.Secret, OlderKeysExpire: k.CreatedAt.Add(overlap)}, nil
}

// changes lists what differs between two views, by field path ("limits.
// rate_per_second", "llm.chain"): the old and new value, or for a secret
// only that it changed.
func changes(before, after *Shop) map[string]any {
	b, a := flatten(before), flatten(after)
	out := map[string]any{}
	for k, v := range a {
		if fmt.Sprint(b[k]) == fmt.Sprint(v) {
			continue
		}
		if isSecretPath(k) {
			out[k] = "changed"
			continue
		}
		out[k] = []any{b[k], v}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			if isSecretPath(k) {
				out[k] = "changed"
				continue
			}
			out[k] = []any{v, nil}
		}
	}
	delete(out, "created_at")
	return out
}

func isSecretPath(p string) bool {
	return strings.HasSuffix(p, "api_key") || strings.HasSuffix(p, "secret")
}

// flatten turns a view into paths and values: objects by key, the chain
// by index ("llm.chain[0].model"), other lists as they are.
func flatten(s *Shop) map[string]any {
	data, _ := json.Marshal(s)
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	out := map[string]any{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if prefix == "rules" {
				out[prefix] = v
				return
			}
			for k, x := range v {
				walk(strings.TrimPrefix(prefix+"."+k, "."), x)
			}
		case []any:
			if prefix == "llm.chain" {
				out[prefix+".length"] = len(v)
				for i, x := range v {
					walk(fmt.Sprintf("%s[%d]", prefix, i), x)
				}
				return
			}
			out[prefix] = v
		default:
			out[prefix] = v
		}
	}
	walk("", m)
	return out
}

// --- FAQ ----------------------------------------------------------------------

// FAQ returns shop's FAQ entries, oldest first.
func (a *Admin) FAQ(ctx context.Context, o Operator, shop string) ([]storage.FAQEntry, error) {
	if err := a.exists(ctx, o, shop); err != nil {
		return nil, err
	}
	entries, _, err := a.cfg.DB.FAQEntries(ctx, shop)
	return entries, err
}

// exists checks o may administer shop and that it exists.
func (a *Admin) exists(ctx context.Context, o Operator, shop string) error {
	if err := o.may(shop); err != nil {
		return err
	}
	_, err := a.cfg.DB.ShopLanguage(ctx, shop)
	return err
}

// ImportFAQ reads FAQ entries from r (CSV or JSON, see faq.Parse; name's
// extension tells which) and stores them in shop's FAQ: new questions are
// added, known ones get the new answer; with replace, entries the file
// does not have are deleted.
func (a *Admin) ImportFAQ(ctx context.Context, o Operator, shop, name string, r io.Reader, replace bool) (storage.FAQImport, error) {
	if err := o.may(shop); err != nil {
		return storage.FAQImport{}, err
	}
	entries, err := faq.Parse(name, r)
	if err != nil {
		return storage.FAQImport{}, peakdesk.FieldError("file", "%s", strings.TrimPrefix(err.Error(), "faq: "))
	}
	return a.cfg.DB.ImportFAQAudited(ctx, shop, entries, replace, &storage.AuditEntry{Actor: o.ID, Scope: o.Shop,
		Shop: shop, Action: "shop.faq.import", Target: "shop:" + shop})
}

// PutFAQ replaces the question, answer and tags of FAQ entry e.ID of shop.
func (a *Admin) PutFAQ(ctx context.Context, o Operator, shop string, e storage.FAQEntry) (*storage.FAQEntry, error) {
	if err := o.may(shop); err != nil {
		return nil, err
	}
	e.ShopID = shop
	e.Question, e.Answer = strings.TrimSpace(e.Question), strings.TrimSpace(e.Answer)
	switch {
	case e.Question == "" || len([]rune(e.Question)) > faq.MaxQuestionRunes:
		return nil, peakdesk.FieldError("question", "a question of 1..%d characters is required", faq.MaxQuestionRunes)
	case e.Answer == "" || len([]rune(e.Answer)) > faq.MaxAnswerRunes:
		return nil, peakdesk.FieldError("answer", "an answer of 1..%d characters is required", faq.MaxAnswerRunes)
	}
	var tags []string
	for _, t := range e.Tags {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	e.Tags = tags
	details, _ := json.Marshal(map[string]any{"question": e.Question})
	if err := a.cfg.DB.UpdateFAQEntry(ctx, &e, &storage.AuditEntry{Actor: o.ID, Scope: o.Shop, Shop: shop,
		Action: "shop.faq.update", Target: fmt.Sprintf("faq:%d", e.ID), Details: details}); err != nil {
		return nil, err
	}
	return &e, nil
}

// DeleteFAQ removes FAQ entry id of shop.
func (a *Admin) DeleteFAQ(ctx context.Context, o Operator, shop string, id int64) error {
	if err := o.may(shop); err != nil {
		return err
	}
	return a.cfg.DB.DeleteFAQEntry(ctx, shop, id, &storage.AuditEntry{Actor: o.ID, Scope: o.Shop, Shop: shop,
		Action: "shop.faq.delete", Target: fmt.Sprintf("faq:%d", id)})
}

// Trial is what the FAQ makes of a question.
type Trial struct {
	Question string `json:"question"`
	// Matches are the most confident entries, best first.
	Matches []TrialMatch `json:"matches"`
	// Threshold is the confidence at which the FAQ answers on its own.
	Threshold float64 `json:"threshold"`
	// AnswersAlone says the best match reaches Threshold: with the LLM
	// unavailable (or the edge shedding load), the FAQ would answer the
	// question with it.
	AnswersAlone bool `json:"answers_alone"`
}

// TrialMatch is one FAQ entry found for a question.
type TrialMatch struct {
	EntryID    int64   `json:"entry_id"`
	Question   string  `json:"question"`
	Answer     string  `json:"answer"`
	Confidence float64 `json:"confidence"`
}

// TryFAQ searches shop's FAQ as it is stored now for question, the way the
// workers do, and returns the top matches.
func (a *Admin) TryFAQ(ctx context.Context, o Operator, shop, question string) (*Trial, error) {
	question = strings.TrimSpace(question)
	if question == "" || len([]rune(question)) > 2000 {
		return nil, peakdesk.FieldError("question", "a question of 1..2000 characters is required")
	}
	entries, err := a.FAQ(ctx, o, shop)
	if err != nil {
		return nil, err
	}
	ms, err := faq.Probe(ctx, entries, question, 5)
	if err != nil {
		return nil, err
	}
	t := &Trial{Question: question, Threshold: a.cfg.FAQThreshold, Matches: []TrialMatch{}}
	for _, m := range ms {
		t.Matches = append(t.Matches, TrialMatch{EntryID: m.EntryID, Question: m.Question, Answer: m.Answer,
			Confidence: m.Confidence})
	}
	t.AnswersAlone = len(ms) > 0 && ms[0].Confidence >= a.cfg.FAQThreshold
	return t, nil
}
