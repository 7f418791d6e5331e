// Package texts holds every text peakdesk itself says to a customer — the
// handoff notices, the order follow-ups — in Chinese and English, in one
// place. A text is chosen by the customer's language (the language of what
// they wrote) or, when that says nothing, the shop's default. Texts are
// text/template templates, so a shop's own wording can replace them later
// with the same fields.
package texts

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
	"time"
	"unicode"
)

// Lang is a language customers are answered in.
type Lang string

// Languages.
const (
	ZH Lang = "zh"
	EN Lang = "en"
)

// known returns l if texts exist in it, else DefaultLang.
func (l Lang) known() Lang {
	if _, ok := catalog[l]; ok {
		return l
	}
	return DefaultLang
}

// DefaultLang is the language of a customer who wrote nothing that tells:
// the shops peakdesk serves sell in Chinese first.
const DefaultLang = ZH

// ParseLang returns the language named by s ("zh", "zh-CN", "en-US", …), or
// ok false.
func ParseLang(s string) (Lang, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	switch {
	case s == "zh" || strings.HasPrefix(s, "zh-") || strings.HasPrefix(s, "zh_"):
		return ZH, true
	case s == "en" || strings.HasPrefix(s, "en-") || strings.HasPrefix(s, "en_"):
		return EN, true
	}
	return "", false
}

// Detect returns the language of a customer's text: Chinese when it has Han
// characters, English when it has Latin letters and no Han, else fallback.
func Detect(text string, fallback Lang) Lang {
	latin := false
	for _, r := range text {
		switch {
		case unicode.Is(unicode.Han, r):
			return ZH
		case r < unicode.MaxASCII && unicode.IsLetter(r):
			latin = true
		}
	}
	if latin {
		return EN
	}
	if fallback == "" {
		return DefaultLang
	}
	return fallback
}

// Key names a text.
type Key string

// Texts.
const (
	// HandoffUnavailable: the assistant cannot answer (LLM and FAQ failed);
	// a human takes over.
	HandoffUnavailable Key = "handoff.unavailable"
	// HandoffDeadLetter: the message could not be processed at all.
	HandoffDeadLetter Key = "handoff.dead_letter"
	// HandoffOrderLookup: the shop's order system did not answer in time
	// for a follow-up, after every retry.
	HandoffOrderLookup Key = "handoff.order_lookup"
	// OrderUpdate: the facts of an order, pushed after a slow lookup
	// (data: Order).
	OrderUpdate Key = "order.update"
	// HandoffRequested: the customer asked for a human; one takes over.
	HandoffRequested Key = "handoff.requested"
	// HandoffWaiting: no agent took the conversation within the shop's
	// handoff_sla; how long it may still take (data: Wait).
	HandoffWaiting Key = "handoff.waiting"
)

// Wait is what HandoffWaiting tells a waiting customer. Minutes 0 means no
// estimate (no agent took a conversation lately).
type Wait struct {
	Minutes int
}

var catalog = map[Lang]map[Key]string{
	ZH: {
		HandoffUnavailable: "抱歉，智能客服暂时无法回答您的问题，已为您转接人工客服，请稍候。",
		HandoffDeadLetter:  "抱歉，您的消息暂时无法自动处理，已为您转接人工客服，人工客服会尽快回复您。",
		HandoffOrderLookup: "抱歉，我们暂时没能查到您的订单信息，已为您转接人工客服，请稍候。",
		HandoffRequested:   "好的，正在为您转接人工客服，请稍候，客服会在这里回复您。",
		HandoffWaiting: `人工客服目前较忙，{{if .Minutes}}预计还需等待约 {{.Minutes}} 分钟，{{else}}我们会尽快为您服务，{{end}}` +
			`请不要离开，您的消息都已收到。`,
		OrderUpdate: `您的订单 {{.ID}} 查到了：{{.Status}}，金额 {{.Total}}` +
			`{{if .Items}}，商品：{{join .Items "、"}}{{end}}。` +
			`{{if .Carrier}}{{.Carrier}}{{if .TrackingNo}} 运单号 {{.TrackingNo}}{{end}}，包裹{{.ParcelStatus}}。{{end}}` +
			`{{if .LastScan}}最新动态：{{.LastScan}}。{{end}}`,
	},
	EN: {
		HandoffUnavailable: "Sorry, our assistant cannot answer right now. A human agent will get back to you shortly.",
		HandoffDeadLetter:  "Sorry, we could not process your message automatically. A human agent will get back to you shortly.",
		HandoffOrderLookup: "Sorry, we could not look up your order right now. A human agent will follow up shortly.",
		HandoffRequested:   "Sure, I am passing you to a human agent. Please stay here; they will reply in this chat shortly.",
		HandoffWaiting: `Our agents are busy right now. {{if .Minutes}}The expected wait is about {{.Minutes}} ` +
			`minute{{if gt .Minutes 1}}s{{end}}.{{else}}We will be with you as soon as we can.{{end}}` +
			` Your messages have all been received.`,
		OrderUpdate: `Update on your order {{.ID}}: {{.Status}}, total {{.Total}}` +
			`{{if .Items}}; items: {{join .Items ", "}}{{end}}.` +
			`{{if .Carrier}} Parcel {{.Carrier}}{{if .TrackingNo}} {{.TrackingNo}}{{end}}: {{.ParcelStatus}}.{{end}}` +
			`{{if .LastScan}} Latest: {{.LastScan}}.{{end}}`,
	},
}

var templates = func() map[Lang]map[Key]*template.Template {
	funcs := template.FuncMap{"join": strings.Join}
	out := map[Lang]map[Key]*template.Template{}
	for lang, texts := range catalog {
		out[lang] = map[Key]*template.Template{}
		for key, text := range texts {
			out[lang][key] = template.Must(template.New(string(key)).Funcs(funcs).Parse(text))
		}
	}
	return out
}()

// Text returns text key in lang (DefaultLang for an unknown language),
// filled with data. Every key is in every language (a test checks).
func Text(lang Lang, key Key, data any) string {
	t, ok := templates[lang.known()][key]
	if !ok {
		if t, ok = templates[DefaultLang][key]; !ok {
			return string(key)
		}
	}
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return fmt.Sprintf("texts: %s: %v", key, err)
	}
	return b.String()
}

// Order is what OrderUpdate tells of an order, already in the customer's
// words: use NewOrder.
type Order struct {
	ID, Status, Total string
	Items             []string
	Carrier           string
	TrackingNo        string
	ParcelStatus      string
	LastScan          string
}

// OrderFacts are an order's facts as the shop API gives them.
type OrderFacts struct {
	ID          string
	Status      string
	AmountCents int64
	Currency    string
	Items       []OrderItem
	Carrier     string
	TrackingNo  string
	// ParcelStatus is the logistics status (in_transit, delivered, …);
	// empty without logistics.
	ParcelStatus string
	// LastScan is the parcel's latest event, if any.
	LastScan *Scan
}

// OrderItem is one line of an order.
type OrderItem struct {
	Name     string
	Quantity int
}

// Scan is one event of a parcel.
type Scan struct {
	At          time.Time
	Location    string
	Description string
}

// china is the time zone customers read scan times in.
var china = time.FixedZone("CST", 8*60*60)

// NewOrder puts f into lang's words: statuses translated where known,
// money with its currency, times in China time.
func NewOrder(lang Lang, f OrderFacts) Order {
	lang = lang.known()
	o := Order{ID: f.ID, Status: status(lang, f.Status), Total: Money(lang, f.AmountCents, f.Currency),
		Carrier: f.Carrier, TrackingNo: f.TrackingNo, ParcelStatus: status(lang, f.ParcelStatus)}
	for _, it := range f.Items {
		o.Items = append(o.Items, fmt.Sprintf("%s ×%d", it.Name, it.Quantity))
	}
	if s := f.LastScan; s != nil {
		at := s.At.In(china).Format("01-02 15:04")
		sep := ", "
		if lang == ZH {
			sep = "，"
		}
		o.LastScan = strings.Join(nonEmpty(at, s.Location, s.Description), sep)
	}
	return o
}

// Money formats cents of currency (CNY when empty) for lang.
func Money(lang Lang, cents int64, currency string) string {
	if currency == "" {
		currency = "CNY"
	}
	amount := fmt.Sprintf("%d.%02d", cents/100, cents%100)
	if currency == "CNY" {
		if lang == ZH {
			return "¥" + amount
		}
		return "CNY " + amount
	}
	return currency + " " + amount
}

var statuses = map[string]map[Lang]string{
	"paid":              {ZH: "已付款，待发货", EN: "paid, awaiting shipment"},
	"awaiting_shipment": {ZH: "待发货", EN: "awaiting shipment"},
	"shipped":           {ZH: "已发货", EN: "shipped"},
	"picked_up":         {ZH: "已揽收", EN: "picked up"},
	"in_transit":        {ZH: "运输中", EN: "in transit"},
	"out_for_delivery":  {ZH: "派送中", EN: "out for delivery"},
	"delivered":         {ZH: "已签收", EN: "delivered"},
	"completed":         {ZH: "已完成", EN: "completed"},
	"canceled":          {ZH: "已取消", EN: "canceled"},
	"cancelled":         {ZH: "已取消", EN: "canceled"},
	"refunded":          {ZH: "已退款", EN: "refunded"},
	"refunding":         {ZH: "退款中", EN: "refund in progress"},
}

// status translates a shop's status word; an unknown one is shown as it is.
func status(lang Lang, s string) string {
	if t, ok := statuses[strings.ToLower(s)][lang]; ok {
		return t
	}
	return strings.ReplaceAll(s, "_", " ")
}

func nonEmpty(parts ...string) []string {
	out := parts[:0]
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}
