package shopadmin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/secrets"
)

// Shop is a shop's configuration as administration shows it: the JSON of
// the admin API and of `peakdesk shop show`. Secrets are masked (their
// last four characters); zero limits and thresholds mean "the process
// default".
type Shop struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	Language      string    `json:"language"`
	Currency      string    `json:"currency"`
	RetentionDays int       `json:"retention_days"`
	CreatedAt     time.Time `json:"created_at"`
	Limits        Limits    `json:"limits"`
	Admission     Admission `json:"admission"`
	// Rules are the keywords that give a message its priority, by
	// priority ("p0", "p1", "p2"); none = the built-in rules.
	Rules   map[string][]string `json:"rules"`
	LLM     LLM                 `json:"llm"`
	ShopAPI ShopAPI             `json:"shop_api"`
	Webhook Webhook             `json:"webhook"`
	Money   Money               `json:"money"`
	Handoff Handoff             `json:"handoff"`
	// OrderAnswers is how order questions are answered: "llm" (the LLM
	// with its tools; the shop's data directly when the LLM cannot) or
	// "direct" (from the shop's data always, without the LLM).
	OrderAnswers string `json:"order_answers"`
}

// Handoff is when and how customers reach a human agent.
type Handoff struct {
	// SLA is how long a customer waits for an agent before being told the
	// expected wait.
	SLA Duration `json:"sla"`
	// Keywords are the shop's own words with which a customer asks for a
	// human, besides the built-in ones ("人工", "agent", ...).
	Keywords []string `json:"keywords"`
}

// Limits are a shop's request and abuse limits at the edge.
type Limits struct {
	// RatePerSecond and RateBurst limit the shop's messages; 0 = default.
	RatePerSecond int `json:"rate_per_second"`
	RateBurst     int `json:"rate_burst"`
	// UserRatePerMinute and UserRateBurst limit one customer's messages;
	// 0 = default.
	UserRatePerMinute int `json:"user_rate_per_minute"`
	UserRateBurst     int `json:"user_rate_burst"`
	// ReadPerUserPerMinute limits a customer's GETs and stream opens.
	ReadPerUserPerMinute int `json:"read_per_user_per_minute"`
	// SSEStreamsPerUser is how many event streams a customer may hold open.
	SSEStreamsPerUser int `json:"sse_streams_per_user"`
	// P0PerUserPerHour is how often a customer's keywords may give p0.
	P0PerUserPerHour int `json:"p0_per_user_per_hour"`
}

// Admission are a shop's admission thresholds: how long a message of each
// priority may expect to queue before the edge sheds it, and the backlog
// below which nothing is shed. Zero (and "") = the process setting
// (PEAKDESK_ADMISSION_*).
type Admission struct {
	MaxWaitP0  Duration `json:"max_wait_p0"`
	MaxWaitP1  Duration `json:"max_wait_p1"`
	MaxWaitP2  Duration `json:"max_wait_p2"`
	MinBacklog int      `json:"min_backlog"`
}

// LLM is a shop's LLM settings.
type LLM struct {
	// BaseURL and APIKey are the shop's provider; empty = the default.
	BaseURL string `json:"base_url"`
	APIKey  string `json:"api_key"`
	// Chain is the model chain, primary first; empty = the default chain.
	Chain []Model `json:"chain"`
	// SystemPrompt replaces the default instructions; "{shop}" is replaced
	// by the shop id.
	SystemPrompt string `json:"system_prompt"`
	// Temperature is sent with every call; null = the provider's default.
	Temperature *float64 `json:"temperature"`
	// MaxTokens caps every completion.
	MaxTokens int `json:"max_tokens"`
}

// Model is one model of a chain and its provider. Empty BaseURL: the shop's
// provider (then the default); empty APIKey: the shop's key when BaseURL is
// empty, else none.
type Model struct {
	Model   string `json:"model"`
	BaseURL string `json:"base_url"`
	APIKey  string `json:"api_key"`
}

// ShopAPI is where peakdesk calls the shop's systems (orders, coupons,
// refunds) and the secret it sends as a bearer token.
type ShopAPI struct {
	BaseURL string `json:"base_url"`
	Secret  string `json:"secret"`
}

// Webhook is where reply webhooks go and the secret that signs them.
type Webhook struct {
	URL    string `json:"url"`
	Secret string `json:"secret"`
}

// Money are the shop's money policies (docs/policies.md), in hundredths of
// the shop's currency.
type Money struct {
	CouponPerUserPerDay     int   `json:"coupon_per_user_per_day"`
	CouponBudgetPerDayCents int64 `json:"coupon_budget_per_day_cents"`
	// CouponMaxCents and RefundMaxCents cap one coupon and one automatic
	// refund; null = the built-in caps.
	CouponMaxCents *int64 `json:"coupon_max_cents"`
	RefundMaxCents *int64 `json:"refund_max_cents"`
	// LLMSpendCapPerDayCents caps the LLM spend of a day; null = no cap.
	LLMSpendCapPerDayCents *int64 `json:"llm_spend_cap_per_day_cents"`
	// LLMCallsPerUserPerHour caps one customer's LLM answers; null = no cap.
	LLMCallsPerUserPerHour *int `json:"llm_calls_per_user_per_hour"`
}

// Duration is a time.Duration written as "30s", "2m" in JSON; "" or 0 is
// zero.
type Duration time.Duration

// String writes d like "90s"; zero as "" (the process setting).
func (d Duration) String() string {
	if d == 0 {
		return ""
	}
	return time.Duration(d).String()
}

// MarshalJSON writes d as a Go duration string; zero as "".
func (d Duration) MarshalJSON() ([]byte, error) {
	if d == 0 {
		return []byte(`""`), nil
	}
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string ("90s"), or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err := json.Unmarshal(b, &secs); err != nil {
			return fmt.Errorf("want a duration like \"90s\"")
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	if s == "" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration like \"90s\", got %q", s)
	}
	*d = Duration(v)
	return nil
}

// view is how c is shown: secrets masked.
func view(c *storage.ShopConfig) *Shop {
	s := &Shop{
		ID: c.ID, Name: c.Name, Language: c.Language, Currency: c.Currency, RetentionDays: c.RetentionDays,
		CreatedAt: c.CreatedAt,
		Limits: Limits{RatePerSecond: c.Limits.RatePerSecond, RateBurst: c.Limits.RateBurst,
			UserRatePerMinute: c.Limits.UserRatePerMinute, UserRateBurst: c.Limits.UserRateBurst,
			ReadPerUserPerMinute: c.Edge.ReadPerUserPerMinute, SSEStreamsPerUser: c.Edge.SSEStreamsPerUser,
			P0PerUserPerHour: c.Edge.P0PerUserPerHour},
		Admission: Admission{MaxWaitP0: Duration(c.Admission.MaxWaitP0), MaxWaitP1: Duration(c.Admission.MaxWaitP1),
			MaxWaitP2: Duration(c.Admission.MaxWaitP2), MinBacklog: c.Admission.MinBacklog},
		Rules: map[string][]string{},
		LLM: LLM{BaseURL: c.LLM.BaseURL, APIKey: secrets.Mask(c.LLM.APIKey), SystemPrompt: c.LLM.SystemPrompt,
			Temperature: c.LLM.Temperature, MaxTokens: c.LLMLimits.MaxTokens, Chain: []Model{}},
		ShopAPI: ShopAPI{BaseURL: c.API.BaseURL, Secret: secrets.Mask(c.API.Secret)},
		Webhook: Webhook{URL: c.API.WebhookURL, Secret: secrets.Mask(c.API.WebhookSecret)},
		Money: Money{CouponPerUserPerDay: c.Coupons.PerUserPerDay, CouponBudgetPerDayCents: c.Coupons.BudgetPerDayCents,
			CouponMaxCents: c.API.CouponMaxCents, RefundMaxCents: c.API.RefundMaxCents,
			LLMSpendCapPerDayCents: c.LLMLimits.SpendCapPerDayCents, LLMCallsPerUserPerHour: c.LLMLimits.CallsPerUserPerHour},
		Handoff:      Handoff{SLA: Duration(c.Takeover.SLA), Keywords: append([]string{}, c.Takeover.Keywords...)},
		OrderAnswers: c.OrderAnswers,
	}
	for _, r := range c.Rules {
		s.Rules[string(r.Priority)] = append(s.Rules[string(r.Priority)], r.Keyword)
	}
	for _, m := range c.LLM.Chain {
		s.LLM.Chain = append(s.LLM.Chain, Model{Model: m.Model, BaseURL: m.BaseURL, APIKey: secrets.Mask(m.APIKey)})
	}
	return s
}

// Patch changes some of a shop's settings: a field left out stays as it
// is, null puts it back to its default (none, for a secret), a value sets
// it. Its JSON has the shape of Shop's.
type Patch struct {
	Name          Opt[string]  `json:"name"`
	Language      Opt[string]  `json:"language"`
	Currency      Opt[string]  `json:"currency"`
	RetentionDays Opt[int]     `json:"retention_days"`
	Limits        LimitsPatch  `json:"limits"`
	Admission     AdmitPatch   `json:"admission"`
	Rules         Opt[Rules]   `json:"rules"`
	LLM           LLMPatch     `json:"llm"`
	ShopAPI       ShopAPIPatch `json:"shop_api"`
	Webhook       WebhookPatch `json:"webhook"`
	Money         MoneyPatch   `json:"money"`
	Handoff       HandoffPatch `json:"handoff"`
	OrderAnswers  Opt[string]  `json:"order_answers"`
}

// HandoffPatch changes Handoff; the keywords replace the keywords.
type HandoffPatch struct {
	SLA      Opt[Duration] `json:"sla"`
	Keywords Opt[[]string] `json:"keywords"`
}

// Rules are keywords by priority.
type Rules map[string][]string

// LimitsPatch changes Limits.
type LimitsPatch struct {
	RatePerSecond        Opt[int] `json:"rate_per_second"`
	RateBurst            Opt[int] `json:"rate_burst"`
	UserRatePerMinute    Opt[int] `json:"user_rate_per_minute"`
	UserRateBurst        Opt[int] `json:"user_rate_burst"`
	ReadPerUserPerMinute Opt[int] `json:"read_per_user_per_minute"`
	SSEStreamsPerUser    Opt[int] `json:"sse_streams_per_user"`
	P0PerUserPerHour     Opt[int] `json:"p0_per_user_per_hour"`
}

// AdmitPatch changes Admission.
type AdmitPatch struct {
	MaxWaitP0  Opt[Duration] `json:"max_wait_p0"`
	MaxWaitP1  Opt[Duration] `json:"max_wait_p1"`
	MaxWaitP2  Opt[Duration] `json:"max_wait_p2"`
	MinBacklog Opt[int]      `json:"min_backlog"`
}

// LLMPatch changes LLM. A chain replaces the chain; a model of it without
// api_key keeps the key stored for its base_url, if any (a key stays with
// its provider: it never follows a model to another base URL).
type LLMPatch struct {
	BaseURL      Opt[string]       `json:"base_url"`
	APIKey       Opt[string]       `json:"api_key"`
	Chain        Opt[[]ModelPatch] `json:"chain"`
	SystemPrompt Opt[string]       `json:"system_prompt"`
	Temperature  Opt[float64]      `json:"temperature"`
	MaxTokens    Opt[int]          `json:"max_tokens"`
}

// ModelPatch is one model of a new chain.
type ModelPatch struct {
	Model   string      `json:"model"`
	BaseURL string      `json:"base_url"`
	APIKey  Opt[string] `json:"api_key"`
}

// ShopAPIPatch changes ShopAPI. A new base_url without a secret drops the
// stored secret: it was for the old address.
type ShopAPIPatch struct {
	BaseURL Opt[string] `json:"base_url"`
	Secret  Opt[string] `json:"secret"`
}

// WebhookPatch changes Webhook. The secret can be replaced, not removed.
type WebhookPatch struct {
	URL    Opt[string] `json:"url"`
	Secret Opt[string] `json:"secret"`
}

// MoneyPatch changes Money.
type MoneyPatch struct {
	CouponPerUserPerDay     Opt[int]   `json:"coupon_per_user_per_day"`
	CouponBudgetPerDayCents Opt[int64] `json:"coupon_budget_per_day_cents"`
	CouponMaxCents          Opt[int64] `json:"coupon_max_cents"`
	RefundMaxCents          Opt[int64] `json:"refund_max_cents"`
	LLMSpendCapPerDayCents  Opt[int64] `json:"llm_spend_cap_per_day_cents"`
	LLMCallsPerUserPerHour  Opt[int]   `json:"llm_calls_per_user_per_hour"`
}

// Opt is a field of a Patch: left out (Set false), null (Set, Value nil)
// or a value.
type Opt[T any] struct {
	Set   bool
	Value *T
}

// Some returns an Opt set to v.
func Some[T any](v T) Opt[T] { return Opt[T]{Set: true, Value: &v} }

// Null returns an Opt set to null.
func Null[T any]() Opt[T] { return Opt[T]{Set: true} }

// UnmarshalJSON reads null or a T.
func (o *Opt[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		o.Value = nil
		return nil
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	o.Value = &v
	return nil
}

// MarshalJSON writes the value or null (a Patch shown back, in tests).
func (o Opt[T]) MarshalJSON() ([]byte, error) {
	if o.Value == nil {
		return []byte("null"), nil
	}
	return json.Marshal(*o.Value)
}

// DecodePatch reads a Patch from JSON, refusing fields it does not know
// (a misspelt setting must not be silently ignored).
func DecodePatch(data []byte) (Patch, error) {
	var p Patch
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, peakdesk.Errorf(peakdesk.EInvalid, "settings: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return p, nil
}

// touchesPlatform reports whether p changes what only platform admins may:
// the request limits and the admission thresholds, which share the desk's
// capacity among shops.
func (p *Patch) touchesPlatform() bool {
	l, a := p.Limits, p.Admission
	return l.RatePerSecond.Set || l.RateBurst.Set || l.UserRatePerMinute.Set || l.UserRateBurst.Set ||
		l.ReadPerUserPerMinute.Set || l.SSEStreamsPerUser.Set || l.P0PerUserPerHour.Set ||
		a.MaxWaitP0.Set || a.MaxWaitP1.Set || a.MaxWaitP2.Set || a.MinBacklog.Set
}

// set applies o to *dst: a value, or def for null.
func set[T any](dst *T, o Opt[T], def T) {
	if !o.Set {
		return
	}
	if o.Value == nil {
		*dst = def
		return
	}
	*dst = *o.Value
}

// setPtr applies o to a nullable *dst.
func setPtr[T any](dst **T, o Opt[T]) {
	if o.Set {
		*dst = o.Value
	}
}

// apply changes c by p and checks the result. check validates a URL for
// field (the SSRF rules).
func (p *Patch) apply(c *storage.ShopConfig, checkURL func(field, url string) error) error {
	set(&c.Name, p.Name, c.ID)
	set(&c.Language, p.Language, "zh")
	set(&c.Currency, p.Currency, storage.DefaultCurrency)
	set(&c.RetentionDays, p.RetentionDays, storage.DefaultRetentionDays)

	set(&c.Limits.RatePerSecond, p.Limits.RatePerSecond, 0)
	set(&c.Limits.RateBurst, p.Limits.RateBurst, 0)
	set(&c.Limits.UserRatePerMinute, p.Limits.UserRatePerMinute, 0)
	set(&c.Limits.UserRateBurst, p.Limits.UserRateBurst, 0)
	set(&c.Edge.ReadPerUserPerMinute, p.Limits.ReadPerUserPerMinute, storage.DefaultEdgeLimits.ReadPerUserPerMinute)
	set(&c.Edge.SSEStreamsPerUser, p.Limits.SSEStreamsPerUser, storage.DefaultEdgeLimits.SSEStreamsPerUser)
	set(&c.Edge.P0PerUserPerHour, p.Limits.P0PerUserPerHour, storage.DefaultEdgeLimits.P0PerUserPerHour)

	var wait [3]Duration
	wait[0], wait[1], wait[2] = Duration(c.Admission.MaxWaitP0), Duration(c.Admission.MaxWaitP1), Duration(c.Admission.MaxWaitP2)
	set(&wait[0], p.Admission.MaxWaitP0, 0)
	set(&wait[1], p.Admission.MaxWaitP1, 0)
	set(&wait[2], p.Admission.MaxWaitP2, 0)
	c.Admission.MaxWaitP0, c.Admission.MaxWaitP1, c.Admission.MaxWaitP2 =
		time.Duration(wait[0]), time.Duration(wait[1]), time.Duration(wait[2])
	set(&c.Admission.MinBacklog, p.Admission.MinBacklog, 0)

	if p.Rules.Set {
		rules, err := readRules(p.Rules.Value)
		if err != nil {
			return err
		}
		c.Rules = rules
	}

	if err := p.LLM.apply(&c.LLM, checkURL); err != nil {
		return err
	}
	set(&c.LLMLimits.MaxTokens, p.LLM.MaxTokens, storage.DefaultLLMMaxTokens)

	// Shop API: a secret belongs to its address.
	oldBase := c.API.BaseURL
	set(&c.API.BaseURL, p.ShopAPI.BaseURL, "")
	c.API.BaseURL = strings.TrimSpace(c.API.BaseURL)
	set(&c.API.Secret, p.ShopAPI.Secret, "")
	if c.API.BaseURL != oldBase && !p.ShopAPI.Secret.Set {
		c.API.Secret = ""
	}
	set(&c.API.WebhookURL, p.Webhook.URL, "")
	c.API.WebhookURL = strings.TrimSpace(c.API.WebhookURL)
	if p.Webhook.Secret.Set {
		if p.Webhook.Secret.Value == nil || *p.Webhook.Secret.Value == "" {
			return peakdesk.FieldError("webhook.secret", "the webhook secret can be replaced, never removed")
		}
		c.API.WebhookSecret = *p.Webhook.Secret.Value
	}

	set(&c.Coupons.PerUserPerDay, p.Money.CouponPerUserPerDay, 1)
	set(&c.Coupons.BudgetPerDayCents, p.Money.CouponBudgetPerDayCents, 50_000)
	setPtr(&c.API.CouponMaxCents, p.Money.CouponMaxCents)
	setPtr(&c.API.RefundMaxCents, p.Money.RefundMaxCents)
	setPtr(&c.LLMLimits.SpendCapPerDayCents, p.Money.LLMSpendCapPerDayCents)
	setPtr(&c.LLMLimits.CallsPerUserPerHour, p.Money.LLMCallsPerUserPerHour)

	sla := Duration(c.Takeover.SLA)
	set(&sla, p.Handoff.SLA, Duration(storage.DefaultHandoffSLA))
	c.Takeover.SLA = time.Duration(sla)
	set(&c.Takeover.Keywords, p.Handoff.Keywords, []string{})
	set(&c.OrderAnswers, p.OrderAnswers, storage.OrderAnswersLLM)
	c.OrderAnswers = strings.TrimSpace(c.OrderAnswers)

	if err := check(c); err != nil {
		return err
	}
	for _, u := range []struct{ field, url string }{{"shop_api.base_url", c.API.BaseURL}, {"webhook.url", c.API.WebhookURL}} {
		if u.url != "" {
			if err := checkURL(u.field, u.url); err != nil {
				return err
			}
		}
	}
	return nil
}

// apply changes s by p: a key stays with its base URL.
func (p *LLMPatch) apply(s *storage.LLMSettings, checkURL func(field, url string) error) error {
	oldBase := s.BaseURL
	set(&s.BaseURL, p.BaseURL, "")
	s.BaseURL = strings.TrimSpace(s.BaseURL)
	set(&s.APIKey, p.APIKey, "")
	if s.BaseURL != oldBase && !p.APIKey.Set {
		s.APIKey = ""
	}
	if s.BaseURL != "" {
		if err := checkURL("llm.base_url", s.BaseURL); err != nil {
			return err
		}
	}
	if p.Chain.Set {
		var models []ModelPatch
		if p.Chain.Value != nil {
			models = *p.Chain.Value
		}
		if len(models) > storage.MaxChain {
			return peakdesk.FieldError("llm.chain", "at most %d models", storage.MaxChain)
		}
		old := s.Chain
		chain := make([]storage.LLMModel, 0, len(models))
		for i, m := range models {
			field := fmt.Sprintf("llm.chain[%d]", i)
			n := storage.LLMModel{Model: strings.TrimSpace(m.Model), BaseURL: strings.TrimSpace(m.BaseURL)}
			if n.Model == "" || len(n.Model) > 200 {
				return peakdesk.FieldError(field+".model", "a model name of 1..200 characters is required")
			}
			if n.BaseURL != "" {
				if err := checkURL(field+".base_url", n.BaseURL); err != nil {
					return err
				}
			}
			switch {
			case m.APIKey.Set && m.APIKey.Value != nil:
				n.APIKey = strings.TrimSpace(*m.APIKey.Value)
			case !m.APIKey.Set:
				// Keep the key stored for this provider, if one is.
				if i := slices.IndexFunc(old, func(o storage.LLMModel) bool {
					return o.BaseURL == n.BaseURL && o.APIKey != ""
				}); i >= 0 {
					n.APIKey = old[i].APIKey
				}
			}
			chain = append(chain, n)
		}
		s.Chain = chain
		s.Models = nil
	}
	set(&s.SystemPrompt, p.SystemPrompt, "")
	setPtr(&s.Temperature, p.Temperature)
	switch {
	case s.Temperature != nil && (*s.Temperature < 0 || *s.Temperature > 2):
		return peakdesk.FieldError("llm.temperature", "must be within 0..2")
	case len(s.SystemPrompt) > 8000:
		return peakdesk.FieldError("llm.system_prompt", "at most 8,000 bytes")
	}
	return nil
}

// readRules turns keywords by priority into rules.
func readRules(r *Rules) ([]storage.PriorityRule, error) {
	if r == nil {
		return nil, nil
	}
	var out []storage.PriorityRule
	for prio, words := range *r {
		p, err := peakdesk.ParsePriority(prio)
		if err != nil {
			return nil, peakdesk.FieldError("rules", "unknown priority %q (want p0, p1 or p2)", prio)
		}
		if len(words) > 500 {
			return nil, peakdesk.FieldError("rules."+prio, "at most 500 keywords per priority")
		}
		for _, w := range words {
			w = strings.TrimSpace(w)
			switch n := len([]rune(w)); {
			case n == 0:
				continue
			case n > 64:
				return nil, peakdesk.FieldError("rules."+prio, "keyword %q is longer than 64 characters", w)
			}
			out = append(out, storage.PriorityRule{Priority: p, Keyword: w})
		}
	}
	slices.SortFunc(out, func(a, b storage.PriorityRule) int {
		return strings.Compare(string(a.Priority)+"\x00"+a.Keyword, string(b.Priority)+"\x00"+b.Keyword)
	})
	return slices.Compact(out), nil
}

// check validates c as a whole, naming the field of the first problem.
func check(c *storage.ShopConfig) error {
	nonNeg := func(field string, v int64) error {
		if v < 0 {
			return peakdesk.FieldError(field, "must not be negative")
		}
		return nil
	}
	switch {
	case strings.TrimSpace(c.Name) == "" || len([]rune(c.Name)) > 200:
		return peakdesk.FieldError("name", "a name of 1..200 characters is required")
	case c.Language != "zh" && c.Language != "en":
		return peakdesk.FieldError("language", "want zh or en, got %q", c.Language)
	case !isCurrency(c.Currency):
		return peakdesk.FieldError("currency", "want an ISO 4217 code like CNY, got %q", c.Currency)
	case c.RetentionDays < 1 || c.RetentionDays > storage.MaxRetentionDays:
		return peakdesk.FieldError("retention_days", "must be within 1..%d", storage.MaxRetentionDays)
	case c.Edge.ReadPerUserPerMinute < 1:
		return peakdesk.FieldError("limits.read_per_user_per_minute", "must be at least 1")
	case c.LLMLimits.MaxTokens < 1 || c.LLMLimits.MaxTokens > 32768:
		return peakdesk.FieldError("llm.max_tokens", "must be within 1..32768")
	}
	for _, f := range []struct {
		field string
		v     int64
	}{
		{"limits.rate_per_second", int64(c.Limits.RatePerSecond)}, {"limits.rate_burst", int64(c.Limits.RateBurst)},
		{"limits.user_rate_per_minute", int64(c.Limits.UserRatePerMinute)},
		{"limits.user_rate_burst", int64(c.Limits.UserRateBurst)},
		{"limits.sse_streams_per_user", int64(c.Edge.SSEStreamsPerUser)},
		{"limits.p0_per_user_per_hour", int64(c.Edge.P0PerUserPerHour)},
		{"admission.max_wait_p0", int64(c.Admission.MaxWaitP0)}, {"admission.max_wait_p1", int64(c.Admission.MaxWaitP1)},
		{"admission.max_wait_p2", int64(c.Admission.MaxWaitP2)}, {"admission.min_backlog", int64(c.Admission.MinBacklog)},
		{"money.coupon_per_user_per_day", int64(c.Coupons.PerUserPerDay)},
		{"money.coupon_budget_per_day_cents", c.Coupons.BudgetPerDayCents},
		{"money.coupon_max_cents", derefOr(c.API.CouponMaxCents)},
		{"money.refund_max_cents", derefOr(c.API.RefundMaxCents)},
		{"money.llm_spend_cap_per_day_cents", derefOr(c.LLMLimits.SpendCapPerDayCents)},
		{"money.llm_calls_per_user_per_hour", derefOr(c.LLMLimits.CallsPerUserPerHour)},
	} {
		if err := nonNeg(f.field, f.v); err != nil {
			return err
		}
	}
	for _, w := range []struct {
		field string
		d     time.Duration
	}{{"admission.max_wait_p0", c.Admission.MaxWaitP0}, {"admission.max_wait_p1", c.Admission.MaxWaitP1},
		{"admission.max_wait_p2", c.Admission.MaxWaitP2}} {
		if w.d > 0 && (w.d < time.Second || w.d > 24*time.Hour) {
			return peakdesk.FieldError(w.field, "must be within 1s..24h (or empty for the process setting)")
		}
	}
	if c.Takeover.SLA < time.Second || c.Takeover.SLA > 7*24*time.Hour {
		return peakdesk.FieldError("handoff.sla", "must be within 1s..168h")
	}
	if c.OrderAnswers != storage.OrderAnswersLLM && c.OrderAnswers != storage.OrderAnswersDirect {
		return peakdesk.FieldError("order_answers", "must be %s or %s", storage.OrderAnswersLLM, storage.OrderAnswersDirect)
	}
	return nil
}

func derefOr[T int | int64](p *T) int64 {
	if p == nil {
		return 0
	}
	return int64(*p)
}

func isCurrency(s string) bool {
	if len(s) != 3 {
		return false
	}
	for _, r := range s {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}
