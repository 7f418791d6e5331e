package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/pii"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// Order answers from the shop's own data, without the LLM (docs/architecture.md).
// "我的快递到哪了？" is answered from the shop's order system when the LLM
// is unavailable (breaker open, a spend or user cap, the edge shedding
// load) or always, for a shop whose order_answers is "direct":
//
//   - with an order number (or a tracking number): the order's status, the
//     parcel's carrier, last scan and ETA; "not found" for an order that is
//     not the customer's;
//   - without one: the customer's recent orders (GET /orders?user_id=&limit=5):
//     one open order is answered about, several are listed to choose from,
//     none is said so;
//   - "退款到哪一步了": the refund's state and expected date.
//
// Lookups are coalesced and cached (Lookups). When the shop does not answer
// within the message's budget, the customer is told at once that their
// order is being checked (texts.OrderChecking) and an order.followup action
// pushes the answer later (Relay), or hands over to a human after its last
// attempt. Every text comes from the shop's templates (texts.Library) in
// the customer's language, personal data masked.

// Order question topics.
const (
	// TopicOrder: where an order or its parcel is.
	TopicOrder = "order"
	// TopicRefund: where a refund of an order is.
	TopicRefund = "refund"
)

// RecentOrders is how many recent orders a question without a number looks
// at.
const RecentOrders = 5

// OrderQuestion is what a customer's text asks about their orders.
type OrderQuestion struct {
	Topic string `json:"topic,omitempty"`
	// OrderID or TrackingNo is the number the customer gave; neither: the
	// customer's recent orders answer.
	OrderID    string `json:"order_id,omitempty"`
	TrackingNo string `json:"tracking_no,omitempty"`
}

var (
	// digitsRe finds order numbers: 6 to 32 digits (full-width folded).
	digitsRe = regexp.MustCompile(`\d{6,32}`)
	// trackingRe finds tracking numbers: a carrier's 2–4 letter prefix and
	// at least 8 digits (SF1234567890, ZTO…, JD…, YT…).
	trackingRe = regexp.MustCompile(`\b[A-Z]{2,4}\d{8,30}\b`)
)

// Intent words. An order or logistics question names an order or a parcel;
// one without a number must also ask where or how it is, so that "订单满300
// 减50吗" (a promotion) is not taken for one.
var (
	orderWords = []string{"订单", "快递", "物流", "包裹", "运单", "单号", "发货", "配送", "签收", "派送", "揽收",
		"order", "package", "parcel", "tracking", "shipment", "delivery"}
	statusWords = []string{"到哪", "在哪", "哪里", "物流", "快递", "包裹", "发货", "配送", "签收", "派送", "揽收", "没收到",
		"还没到", "没到", "进度", "状态", "查", "什么时候到", "多久到",
		"where", "status", "track", "ship", "deliver", "arrive", "package", "parcel", "when will"}
	refundWords       = []string{"退款", "退货", "退钱", "refund", "money back", "return"}
	refundStatusWords = []string{"到哪", "哪一步", "进度", "状态", "多久", "什么时候", "到账", "还没", "没到", "没收到",
		"where", "status", "when", "progress", "yet", "received", "how long"}
)

func containsAny(s string, words []string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// foldWidth turns full-width ASCII (１２３, ＳＦ) into ASCII.
func foldWidth(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 0xFF01 && r <= 0xFF5E {
			return r - 0xFEE0
		}
		return r
	}, s)
}

// ParseOrderQuestion reports whether text asks where an order, a parcel or
// a refund is, and which number it names. A refund request ("我要退款") is
// not such a question: refunds are promised by the LLM's checked tool, never
// from a keyword. Numbers that are personal data (a phone number, an ID or
// bank card) are never taken for order numbers.
func ParseOrderQuestion(text string) (OrderQuestion, bool) {
	text = foldWidth(pii.StripFormat(text))
	lower := strings.ToLower(text)
	personal := pii.Values(text)
	var q OrderQuestion
	for _, m := range trackingRe.FindAllString(text, -1) {
		if !personal[m] && !onlyDigits(m) {
			q.TrackingNo = m
			break
		}
	}
	if q.TrackingNo == "" {
		for _, m := range digitsRe.FindAllString(text, -1) {
			if !personal[m] {
				q.OrderID = m
				break
			}
		}
	}
	numbered := q.OrderID != "" || q.TrackingNo != ""
	switch {
	case containsAny(lower, refundWords):
		if !containsAny(lower, refundStatusWords) {
			return OrderQuestion{}, false
		}
		q.Topic = TopicRefund
		q.TrackingNo = ""
		if q.OrderID == "" && numbered {
			return OrderQuestion{}, false // a refund is of an order, not of a parcel
		}
		return q, true
	case numbered && containsAny(lower, orderWords):
		q.Topic = TopicOrder
		return q, true
	case !numbered && containsAny(lower, orderWords) && containsAny(lower, statusWords),
		!numbered && containsAny(lower, []string{"我的快递", "我的包裹", "where is my", "where's my"}):
		q.Topic = TopicOrder
		return q, true
	}
	return OrderQuestion{}, false
}

func onlyDigits(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) }) < 0
}

// openOrder reports whether an order may still be on its way.
func openOrder(o shopapi.Order) bool {
	switch strings.ToLower(o.Status) {
	case "delivered", "completed", "canceled", "cancelled", "refunded", "closed":
		return false
	}
	return true
}

// orderAnswer is the answer to an order question from the shop's data.
type orderAnswer struct {
	text   string
	masked map[string]int
	// order and logistics are the facts of one order, when the answer is
	// about one.
	order     *shopapi.Order
	logistics *shopapi.Logistics
	// general: the data says nothing of an order of the customer's that
	// the question named — no recent orders, or no refund on the one
	// order — so a general answer may serve the question better.
	general bool
}

// orderDesk answers order questions from lookups, in the shop's words.
type orderDesk struct {
	lookups *Lookups
	texts   *texts.Library
}

// answer answers q for user of shop in lang. An error means the shop did
// not answer (in time); the caller tells the customer "checking" and
// follows up.
func (d *orderDesk) answer(ctx context.Context, shop, user string, lang texts.Lang, q OrderQuestion) (orderAnswer, error) {
	var key texts.Key
	var data any
	var own []string // numbers of the customer's that stay readable
	var a orderAnswer
	orderID := q.OrderID
	if q.TrackingNo != "" {
		orders, err := d.lookups.ByTracking(ctx, shop, q.TrackingNo)
		if err != nil {
			return a, err
		}
		own = append(own, q.TrackingNo)
		orderID = ""
		for _, o := range orders {
			if o.UserID == user {
				orderID = o.ID
				break
			}
		}
		if orderID == "" {
			return d.render(ctx, shop, lang, texts.OrderNotFound, texts.NewOrder(lang, texts.OrderFacts{ID: q.TrackingNo}), own, a)
		}
	}
	if orderID == "" {
		// No number: the customer's recent orders.
		orders, err := d.lookups.OrdersOfUser(ctx, shop, user, RecentOrders)
		if err != nil {
			return a, err
		}
		var mine, open []shopapi.Order
		for _, o := range orders {
			if o.UserID == user { // a shop's answer is checked, not trusted
				mine = append(mine, o)
				if openOrder(o) {
					open = append(open, o)
				}
			}
		}
		candidates := cmp.Or(len(open), len(mine))
		if len(open) == 0 {
			open = mine
		}
		switch {
		case candidates == 0:
			a.general = true
			return d.render(ctx, shop, lang, texts.OrdersNone, texts.NewOrderList(lang, nil), nil, a)
		case candidates > 1:
			facts := make([]texts.OrderFacts, len(open))
			for i := range open {
				facts[i] = OrderFacts(&open[i], nil)
				own = append(own, open[i].ID)
			}
			return d.render(ctx, shop, lang, texts.OrdersChoose, texts.NewOrderList(lang, facts), own, a)
		}
		orderID = open[0].ID
	}
	own = append(own, orderID)
	f, err := d.lookups.Order(ctx, shop, orderID)
	if err != nil {
		return a, err
	}
	if !f.Found || f.Order.UserID != user {
		// Unknown and someone else's are told apart to nobody.
		return d.render(ctx, shop, lang, texts.OrderNotFound, texts.NewOrder(lang, texts.OrderFacts{ID: orderID}), own, a)
	}
	a.order, a.logistics = f.Order, f.Logistics
	if f.Logistics != nil {
		own = append(own, f.Logistics.TrackingNo)
	}
	key, data = texts.OrderUpdate, texts.NewOrder(lang, OrderFacts(f.Order, f.Logistics))
	if q.Topic == TopicRefund {
		refunds, found, err := d.lookups.Refunds(ctx, shop, orderID)
		if err != nil {
			return a, err
		}
		key, data = texts.RefundNone, texts.NewOrder(lang, texts.OrderFacts{ID: orderID})
		a.general = q.OrderID == "" && q.TrackingNo == "" // "how long do refunds take?", no refund asked for
		if found && len(refunds) > 0 {
			a.general = false
			r := refunds[len(refunds)-1]
			key, data = texts.RefundStatus, texts.NewRefund(lang, texts.RefundFacts{OrderID: orderID,
				AmountCents: r.AmountCents, Currency: cmp.Or(r.Currency, f.Order.Currency), Status: r.Status,
				ExpectedAt: r.ExpectedAt})
		}
	}
	return d.render(ctx, shop, lang, key, data, own, a)
}

// render fills in the shop's text and masks personal data in it (a
// courier's or the recipient's phone number in a scan), keeping the
// customer's own order and tracking numbers readable.
func (d *orderDesk) render(ctx context.Context, shop string, lang texts.Lang, key texts.Key, data any, own []string,
	a orderAnswer) (orderAnswer, error) {
	a.text, a.masked = pii.MaskExcept(d.texts.Text(ctx, shop, lang, key, data), pii.Values(strings.Join(own, "\n")))
	return a, nil
}

// checking is the "checking your order" text for q.
func (d *orderDesk) checking(ctx context.Context, shop string, lang texts.Lang, q OrderQuestion) string {
	id := cmp.Or(q.OrderID, q.TrackingNo)
	text, _ := pii.MaskExcept(d.texts.Text(ctx, shop, lang, texts.OrderChecking, texts.NewOrder(lang, texts.OrderFacts{ID: id})),
		pii.Values(id))
	return text
}

// DirectAnswer is an answer to an order question from the shop's data.
type DirectAnswer struct {
	// Text is the reply, personal data masked.
	Text string
	// Masked counts the personal data masked in it, by kind.
	Masked map[string]int
	// Actions are to be stored with the reply: the order.followup when the
	// shop did not answer in time.
	Actions []peakdesk.Action
	// FollowUp means Text says "checking" and the facts follow.
	FollowUp bool
	// General means the data says nothing of an order the customer named
	// (no recent orders; no refund on their order, asked without a
	// number): a general question that only looked like an order question
	// ("退款多久能到账？") is better answered by a confident FAQ entry.
	General bool
}

// DirectCall is an order question to answer directly.
type DirectCall struct {
	Shop, User, ConversationID string
	// MessageID is the message answered; it keys the follow-up.
	MessageID string
	Lang      texts.Lang
	Question  OrderQuestion
	// AskedAt is when the customer asked (the message's acceptance), for
	// the time to the final answer.
	AskedAt time.Time
}

// OrderAnswersDirect reports whether shop answers order questions from its
// data always (order_answers = direct), cached briefly.
func (t *Tools) OrderAnswersDirect(ctx context.Context, shop string) bool {
	return t.modes.direct(ctx, shop)
}

// AnswerOrder answers c's question from the shop's data within the lookup
// budget (and ctx's deadline): the facts, or — when the shop is slow or
// down — "checking" and an order.followup action that pushes them later.
// Its error is for failures of peakdesk itself (an action that cannot be
// built).
func (t *Tools) AnswerOrder(ctx context.Context, c DirectCall) (DirectAnswer, error) {
	lctx, cancel := context.WithTimeout(ctx, t.cfg.LookupBudget)
	defer cancel()
	a, err := t.desk.answer(lctx, c.Shop, c.User, c.Lang, c.Question)
	if err == nil {
		t.metrics.final.WithLabelValues(finalDirect).Observe(sinceAsked(c.AskedAt))
		return DirectAnswer{Text: a.text, Masked: a.masked, General: a.general}, nil
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return DirectAnswer{}, ctx.Err()
	}
	// Out of time or the shop failed: "checking" now, the facts later.
	act, err := t.followUp(c)
	if err != nil {
		return DirectAnswer{}, err
	}
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return DirectAnswer{Text: t.desk.checking(tctx, c.Shop, c.Lang, c.Question), Actions: []peakdesk.Action{act},
		FollowUp: true}, nil
}

// ShedOrder is the answer to an order question the edge sheds under
// overload: "checking" at once, and an order.followup that the relays carry
// out (coalesced lookups, no LLM, no queue) — the edge never waits on the
// shop. ok is false when text is not an order question.
func (t *Tools) ShedOrder(ctx context.Context, m *peakdesk.Message) (text string, actions []peakdesk.Action, ok bool, err error) {
	q, ok := ParseOrderQuestion(m.Text)
	if !ok {
		return "", nil, false, nil
	}
	lang := texts.Detect(m.Text, texts.DefaultLang)
	a, err := t.followUp(DirectCall{Shop: m.ShopID, User: m.UserID, ConversationID: m.ConversationID,
		MessageID: m.ID, Lang: lang, Question: q, AskedAt: m.AcceptedAt})
	if err != nil {
		return "", nil, false, err
	}
	return t.desk.checking(ctx, m.ShopID, lang, q), []peakdesk.Action{a}, true, nil
}

// followUp is the order.followup action of c; the same question of the
// same message is one action.
func (t *Tools) followUp(c DirectCall) (peakdesk.Action, error) {
	q := c.Question
	return newAction(peakdesk.ActionOrderFollowUp, c.Shop, c.ConversationID, t.cfg.FollowUpMaxAttempts,
		FollowUpPayload{OrderID: q.OrderID, TrackingNo: q.TrackingNo, Topic: q.Topic, UserID: c.User,
			MessageID: c.MessageID, Lang: c.Lang, AskedAt: c.AskedAt},
		c.MessageID, q.OrderID, q.TrackingNo, q.Topic)
}

// Time-to-final-answer paths (the path label of
// peakdesk_order_final_answer_seconds).
const (
	finalDirect   = "direct"   // answered within the message's budget
	finalFollowUp = "followup" // pushed by a follow-up
	finalHandoff  = "handoff"  // the follow-up gave up: a human
)

func sinceAsked(at time.Time) float64 {
	if at.IsZero() {
		return 0
	}
	return max(time.Since(at).Seconds(), 0)
}

// orderMetrics are the order answers' metrics, shared by the Tools and the
// Relay of a process.
type orderMetrics struct {
	// final is the time from a customer's order question to its final
	// answer: the facts (directly or by a follow-up), or a human.
	final *prometheus.HistogramVec
	// pending counts order follow-ups not yet final (from Postgres).
	pending prometheus.Gauge
}

func newOrderMetrics(reg prometheus.Registerer) (*orderMetrics, error) {
	final, err := registerShared(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "peakdesk_order_final_answer_seconds",
		Help:    "Time from a customer's order question to its final answer, by path: direct (within the message's budget), followup (pushed later), handoff (the follow-up gave up).",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 240, 300, 600},
	}, []string{"path"}))
	if err != nil {
		return nil, fmt.Errorf("outbox: order metrics: %w", err)
	}
	pending, err := registerShared(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "peakdesk_order_followups_pending",
		Help: "Order follow-ups not yet final (pending, running or retrying): customers waiting for their order's facts.",
	}))
	if err != nil {
		return nil, fmt.Errorf("outbox: order metrics: %w", err)
	}
	return &orderMetrics{final: final, pending: pending}, nil
}

// modeCache keeps each shop's order_answers setting briefly.
type modeCache struct {
	db  *storage.DB
	ttl time.Duration

	mu sync.Mutex
	m  map[string]cachedMode
}

type cachedMode struct {
	direct  bool
	expires time.Time
}

// direct reports whether shop answers order questions directly always.
// When Postgres fails it keeps what it knew (or the LLM default).
func (c *modeCache) direct(ctx context.Context, shop string) bool {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.m[shop]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.direct
	}
	mode, err := c.db.ShopOrderAnswers(ctx, shop)
	if err == nil {
		e.direct = mode == storage.OrderAnswersDirect
	}
	c.mu.Lock()
	c.m[shop] = cachedMode{direct: e.direct, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return e.direct
}
