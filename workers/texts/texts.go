// Package texts holds every text peakdesk itself says to a customer — the
// handoff notices, the order answers and follow-ups — in Chinese and
// English, in one place. A text is chosen by the customer's language (the
// language of what they wrote) or, when that says nothing, the shop's
// default. Texts are text/template templates; a shop may replace any of
// them with its own wording over the same fields (Library, Validate).
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
	// OrderUpdate: the facts of an order — status, parcel, last scan, ETA
	// — answered directly or pushed after a slow lookup (data: Order).
	OrderUpdate Key = "order.update"
	// HandoffRequested: the customer asked for a human; one takes over.
	HandoffRequested Key = "handoff.requested"
	// HandoffWaiting: no agent took the conversation within the shop's
	// handoff_sla; how long it may still take (data: Wait).
	HandoffWaiting Key = "handoff.waiting"
	// OrderChecking: the shop's order system is slow; the facts follow in
	// this conversation (data: Order, only ID set — empty when the customer
	// named no order).
	OrderChecking Key = "order.checking"
	// OrderNotFound: no such order of this customer (data: Order, ID set).
	OrderNotFound Key = "order.not_found"
	// OrdersNone: the customer asked without a number and has no recent
	// orders (data: OrderList, empty).
	OrdersNone Key = "orders.none"
	// OrdersChoose: the customer asked without a number and has several
	// open orders: which one? (data: OrderList).
	OrdersChoose Key = "orders.choose"
	// RefundStatus: where a refund of an order is (data: Refund).
	RefundStatus Key = "refund.status"
	// RefundNone: the order has no refund (data: Order, ID set).
	RefundNone Key = "refund.none"
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
			`{{if .LastScan}}最新动态：{{.LastScan}}。{{end}}{{if .ETA}}预计 {{.ETA}} 送达。{{end}}`,
		OrderChecking: `正在为您查询{{if .ID}}订单 {{.ID}} 的{{else}}您的订单{{end}}信息，查到后会在此会话中第一时间告诉您，请稍候。`,
		OrderNotFound: `没有查到订单 {{.ID}}，请核对订单号后再发给我们。`,
		OrdersNone:    `没有查到您最近的订单。如果是用其他账号下的单，请把订单号发给我们。`,
		OrdersChoose: `您最近有 {{len .Orders}} 个订单，请问您问的是哪一个？` +
			`{{range .Orders}}` + "\n" + `· 订单 {{.ID}}：{{.Item}}，{{.Date}} 下单，{{.Status}}{{end}}` + "\n" + `请回复订单号。`,
		RefundStatus: `订单 {{.OrderID}} 的退款 {{.Amount}}：{{.Status}}{{if .Expected}}，预计 {{.Expected}} 前到账{{end}}。`,
		RefundNone:   `订单 {{.ID}} 目前没有退款申请。如需退款，请告诉我们原因。`,
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
			`{{if .LastScan}} Latest: {{.LastScan}}.{{end}}{{if .ETA}} Expected by {{.ETA}}.{{end}}`,
		OrderChecking: `We are checking {{if .ID}}order {{.ID}}{{else}}your orders{{end}} for you and will post the details in this conversation shortly.`,
		OrderNotFound: `We could not find order {{.ID}}. Please check the order number and send it again.`,
		OrdersNone:    `We found no recent orders on your account. If you ordered with another account, please send us the order number.`,
		OrdersChoose: `You have {{len .Orders}} recent orders. Which one do you mean?` +
			`{{range .Orders}}` + "\n" + `· Order {{.ID}}: {{.Item}}, ordered {{.Date}}, {{.Status}}{{end}}` + "\n" + `Please reply with the order number.`,
		RefundStatus: `Your refund of {{.Amount}} for order {{.OrderID}}: {{.Status}}{{if .Expected}}, expected back by {{.Expected}}{{end}}.`,
		RefundNone:   `There is no refund request for order {{.ID}} yet. If you want one, tell us why.`,
	},
}

// funcs are the functions templates may use (a shop's too).
var funcs = template.FuncMap{"join": strings.Join}

func parse(key Key, text string) (*template.Template, error) {
	return template.New(string(key)).Funcs(funcs).Parse(text)
}

var templates = func() map[Lang]map[Key]*template.Template {
	out := map[Lang]map[Key]*template.Template{}
	for lang, texts := range catalog {
		out[lang] = map[Key]*template.Template{}
		for key, text := range texts {
			out[lang][key] = template.Must(parse(key, text))
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
	// ETA is the day the carrier expects to deliver, if it says.
	ETA string
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
	// ETA is when the carrier expects to deliver, if it says.
	ETA *time.Time
	// CreatedAt is when the order was placed.
	CreatedAt time.Time
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
	if f.ETA != nil {
		o.ETA = day(lang, *f.ETA)
	}
	return o
}

// day is a date in China time, in lang's words.
func day(lang Lang, t time.Time) string {
	t = t.In(china)
	if lang == ZH {
		return fmt.Sprintf("%d月%d日", t.Month(), t.Day())
	}
	return t.Format("Jan 2")
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
	// Refund states.
	"requested":  {ZH: "已提交，等待商家处理", EN: "requested, waiting for the shop"},
	"approved":   {ZH: "商家已同意，等待退款", EN: "approved, the money is on its way"},
	"processing": {ZH: "退款处理中", EN: "being processed"},
	"succeeded":  {ZH: "已退款到原支付账户", EN: "refunded to your original payment method"},
	"rejected":   {ZH: "商家未同意", EN: "declined by the shop"},
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
