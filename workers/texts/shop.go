package texts

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"text/template"
	"time"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
)

// OrderList is what OrdersChoose and OrdersNone tell of a customer's recent
// orders: use NewOrderList.
type OrderList struct {
	Orders []OrderLine
}

// OrderLine is one order of an OrderList, in the customer's words.
type OrderLine struct {
	ID, Item, Date, Status string
}

// NewOrderList puts orders into lang's words: the first item (and how many
// more), the day it was placed in China time, its status.
func NewOrderList(lang Lang, orders []OrderFacts) OrderList {
	lang = lang.known()
	l := OrderList{Orders: make([]OrderLine, 0, len(orders))}
	for _, f := range orders {
		line := OrderLine{ID: f.ID, Status: status(lang, f.Status)}
		if !f.CreatedAt.IsZero() {
			line.Date = day(lang, f.CreatedAt)
		}
		if n := len(f.Items); n > 0 {
			line.Item = f.Items[0].Name
			if n > 1 {
				if lang == ZH {
					line.Item += fmt.Sprintf(" 等 %d 件", n)
				} else {
					line.Item += fmt.Sprintf(" and %d more", n-1)
				}
			}
		}
		l.Orders = append(l.Orders, line)
	}
	return l
}

// RefundFacts are a refund's facts as the shop API gives them.
type RefundFacts struct {
	OrderID     string
	AmountCents int64
	Currency    string
	// Status is requested, approved, processing, succeeded, rejected or
	// canceled (another word is shown as it is).
	Status     string
	ExpectedAt *time.Time
}

// Refund is what RefundStatus tells of a refund: use NewRefund.
type Refund struct {
	OrderID, Amount, Status, Expected string
}

// NewRefund puts f into lang's words.
func NewRefund(lang Lang, f RefundFacts) Refund {
	lang = lang.known()
	r := Refund{OrderID: f.OrderID, Amount: Money(lang, f.AmountCents, f.Currency), Status: status(lang, f.Status)}
	// A finished refund expects nothing any more.
	if f.ExpectedAt != nil && f.Status != "succeeded" && f.Status != "rejected" && f.Status != "canceled" {
		r.Expected = day(lang, *f.ExpectedAt)
	}
	return r
}

// samples are data of every field each text may use, to try a shop's
// template with before it is stored.
var samples = func() map[Key]any {
	at := time.Date(2026, 11, 11, 0, 30, 0, 0, time.UTC)
	order := NewOrder(ZH, OrderFacts{ID: "1234567", Status: "shipped", AmountCents: 56800,
		Items: []OrderItem{{Name: "Kettle", Quantity: 1}}, Carrier: "SF Express", TrackingNo: "SF1234567",
		ParcelStatus: "in_transit", LastScan: &Scan{At: at, Location: "Shanghai", Description: "Arrived"}, ETA: &at})
	list := NewOrderList(ZH, []OrderFacts{{ID: "1234567", Status: "shipped", CreatedAt: at,
		Items: []OrderItem{{Name: "Kettle", Quantity: 1}}}})
	return map[Key]any{
		HandoffUnavailable: order, HandoffDeadLetter: order, HandoffOrderLookup: order, HandoffRequested: order,
		HandoffWaiting: Wait{Minutes: 3},
		OrderUpdate:    order, OrderChecking: order, OrderNotFound: order, RefundNone: order,
		OrdersNone: list, OrdersChoose: list,
		RefundStatus: NewRefund(ZH, RefundFacts{OrderID: "1234567", AmountCents: 100, Status: "processing", ExpectedAt: &at}),
	}
}()

// MaxTemplateRunes bounds a shop's template.
const MaxTemplateRunes = 2000

// Validate checks a shop's wording of key in lang before it is stored: the
// language and key must exist, and the template must parse and fill in
// with the fields the built-in text has (an unknown field is an error). The
// error is an invalid_argument naming the field at fault.
func Validate(lang Lang, key Key, text string) error {
	if _, ok := catalog[lang]; !ok {
		return peakdesk.FieldError("lang", "lang must be zh or en")
	}
	sample, ok := samples[key]
	if _, known := catalog[lang][key]; !ok || !known {
		return peakdesk.FieldError("key", "there is no text %q", key)
	}
	switch n := utf8.RuneCountInString(text); {
	case strings.TrimSpace(text) == "":
		return peakdesk.FieldError("template", "the template is empty")
	case n > MaxTemplateRunes:
		return peakdesk.FieldError("template", "the template has %d characters; at most %d", n, MaxTemplateRunes)
	}
	t, err := parse(key, text)
	if err != nil {
		return peakdesk.FieldError("template", "the template does not parse: %v", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, sample); err != nil {
		return peakdesk.FieldError("template", "the template does not fill in: %v", err)
	}
	if strings.TrimSpace(b.String()) == "" {
		return peakdesk.FieldError("template", "the template says nothing")
	}
	return nil
}

// Keys lists every text's key.
func Keys() []Key {
	keys := make([]Key, 0, len(catalog[DefaultLang]))
	for k := range catalog[DefaultLang] {
		keys = append(keys, k)
	}
	return keys
}

// Override is a shop's own wording of one text.
type Override struct {
	Lang     Lang
	Key      Key
	Template string
}

// LoadFunc returns a shop's overrides (storage.DB.ShopTexts, converted).
type LoadFunc func(ctx context.Context, shop string) ([]Override, error)

// Library renders texts with each shop's own wording where it has one, the
// built-in text elsewhere. A shop's overrides are cached for the TTL, so
// a change reaches every process within it. A nil *Library renders the
// built-in texts. It is safe for concurrent use.
type Library struct {
	load LoadFunc
	ttl  time.Duration
	log  *slog.Logger

	mu    sync.Mutex
	shops map[string]*shopTexts
}

type shopTexts struct {
	mu     sync.Mutex // one load at a time per shop
	loaded time.Time
	byLang map[Lang]map[Key]*template.Template
}

// NewLibrary returns a Library loading overrides with load, cached for ttl
// (0: 2 s). log receives load failures (nil: slog.Default()).
func NewLibrary(load LoadFunc, ttl time.Duration, log *slog.Logger) *Library {
	if ttl <= 0 {
		ttl = 2 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	return &Library{load: load, ttl: ttl, log: log, shops: map[string]*shopTexts{}}
}

// Text returns text key in lang for shop: the shop's own wording when it
// has one that fills in, else Text(lang, key, data).
func (l *Library) Text(ctx context.Context, shop string, lang Lang, key Key, data any) string {
	if l != nil {
		if t := l.override(ctx, shop, lang.known(), key); t != nil {
			var b bytes.Buffer
			if err := t.Execute(&b, data); err == nil {
				return b.String()
			}
		}
	}
	return Text(lang, key, data)
}

// override returns shop's template for lang and key, or nil.
func (l *Library) override(ctx context.Context, shop string, lang Lang, key Key) *template.Template {
	l.mu.Lock()
	st := l.shops[shop]
	if st == nil {
		st = &shopTexts{}
		l.shops[shop] = st
	}
	l.mu.Unlock()

	st.mu.Lock()
	defer st.mu.Unlock()
	if time.Since(st.loaded) >= l.ttl {
		overrides, err := l.load(ctx, shop)
		if err != nil {
			// Keep what we had (or the built-in texts); try again soon.
			l.log.Warn("shop texts unavailable; using the last known", "shop", shop, "err", err)
			st.loaded = time.Now().Add(-l.ttl + min(l.ttl, time.Second))
		} else {
			st.byLang, st.loaded = compile(overrides), time.Now()
		}
	}
	return st.byLang[lang][key]
}

// compile parses overrides; one that does not parse (it was stored without
// Validate) is left out.
func compile(overrides []Override) map[Lang]map[Key]*template.Template {
	out := map[Lang]map[Key]*template.Template{}
	for _, o := range overrides {
		t, err := parse(o.Key, o.Template)
		if err != nil {
			continue
		}
		if out[o.Lang] == nil {
			out[o.Lang] = map[Key]*template.Template{}
		}
		out[o.Lang][o.Key] = t
	}
	return out
}
