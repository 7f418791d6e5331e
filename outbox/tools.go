package outbox

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// Tool names offered to the LLM.
const (
	ToolLookupOrder   = "lookup_order"
	ToolLookupRefund  = "lookup_refund"
	ToolIssueCoupon   = "issue_coupon"
	ToolRequestRefund = "request_refund"
	ToolHandoff       = "handoff_to_human"
)

// Built-in policy caps, used when a shop's settings leave them unset.
const (
	DefaultCouponMaxCents = 2000  // 20.00
	DefaultRefundMaxCents = 50000 // 500.00
)

// maxReasonRunes bounds the reason carried to the shop.
const maxReasonRunes = 200

var orderIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ToolsConfig configures Tools. DB and Shop are required.
type ToolsConfig struct {
	DB   *storage.DB
	Shop *shopapi.Client
	// LookupBudget bounds a shop lookup made while answering (the message's
	// own deadline bounds it too). Default 2 s.
	LookupBudget time.Duration
	// MaxAttempts is the budget of coupon and refund actions. Default
	// DefaultMaxAttempts.
	MaxAttempts int
	// FollowUpMaxAttempts is the budget of order follow-ups. Default
	// DefaultFollowUpMaxAttempts.
	FollowUpMaxAttempts int
	// GrantLease is how long a coupon or refund promised by a tool holds
	// its place in the shop's limits before the reply that promises it is
	// stored; longer than any turn runs. Default 5 minutes.
	GrantLease time.Duration
	// Lookups reads orders from the shops, coalesced and cached; nil
	// makes uncached ones, coalesced within the process.
	Lookups *Lookups
	// Texts renders the customer texts of order answers in each shop's
	// wording; nil: the built-in texts.
	Texts *texts.Library
	// SettingsTTL is how long a shop's order_answers setting is cached.
	// Default 2 s.
	SettingsTTL time.Duration
	// Registerer receives the order answers' metrics; default a private
	// registry.
	Registerer prometheus.Registerer
}

func (c *ToolsConfig) setDefaults() {
	c.LookupBudget = cmp.Or(c.LookupBudget, 2*time.Second)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, DefaultMaxAttempts)
	c.FollowUpMaxAttempts = cmp.Or(c.FollowUpMaxAttempts, DefaultFollowUpMaxAttempts)
	c.GrantLease = cmp.Or(c.GrantLease, 5*time.Minute)
	c.SettingsTTL = cmp.Or(c.SettingsTTL, 2*time.Second)
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
}

func (c *ToolsConfig) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("outbox: tools config: DB is required")
	case c.Shop == nil:
		return errors.New("outbox: tools config: Shop is required")
	case c.MaxAttempts < 1 || c.FollowUpMaxAttempts < 1:
		return errors.New("outbox: tools config: MaxAttempts and FollowUpMaxAttempts must be at least 1")
	}
	return nil
}

// Tools are the functions the LLM may call while answering. Each call is
// checked against the shop's policy before anything is promised; effects are
// not carried out inline but returned as actions for the caller to insert
// in the reply's transaction.
type Tools struct {
	cfg     ToolsConfig
	desk    *orderDesk
	modes   *modeCache
	metrics *orderMetrics
}

// NewTools returns Tools for cfg.
func NewTools(cfg ToolsConfig) (*Tools, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Lookups == nil {
		var err error
		if cfg.Lookups, err = NewLookups(LookupsConfig{Shop: cfg.Shop, Registerer: cfg.Registerer}); err != nil {
			return nil, err
		}
	}
	m, err := newOrderMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Tools{cfg: cfg, desk: &orderDesk{lookups: cfg.Lookups, texts: cfg.Texts},
		modes: &modeCache{db: cfg.DB, ttl: cfg.SettingsTTL, m: map[string]cachedMode{}}, metrics: m}, nil
}

// ToolDef describes one tool to the LLM: a name, what it is for, and a JSON
// schema of its arguments.
type ToolDef struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
}

// Definitions returns the tools to offer the LLM.
func (t *Tools) Definitions() []ToolDef {
	return []ToolDef{
		{
			Name: ToolLookupOrder,
			Description: "Look up one of the customer's orders: status, amount, items and where the parcel is " +
				"(carrier, last scan, expected delivery). Use it when the customer asks about an order, a delivery " +
				"or a parcel. Give the order number or the tracking number the customer gave; without either, " +
				"the customer's recent orders are looked at (one open order is described, several are listed " +
				"so that you can ask which one).",
			Parameters: json.RawMessage(`{"type":"object","properties":{` +
				`"order_id":{"type":"string","description":"the order number the customer gave, if any"},` +
				`"tracking_no":{"type":"string","description":"the parcel's tracking number the customer gave, if any"}},` +
				`"additionalProperties":false}`),
		},
		{
			Name: ToolLookupRefund,
			Description: "Look up where the refund of one of the customer's orders is: its state and when the money " +
				"is expected back. Use it when the customer asks about a refund they already requested.",
			Parameters: json.RawMessage(`{"type":"object","properties":{` +
				`"order_id":{"type":"string","description":"the order whose refund the customer asks about"}},` +
				`"required":["order_id"],"additionalProperties":false}`),
		},
		{
			Name: ToolIssueCoupon,
			Description: "Issue a coupon to the customer as an apology, e.g. for a late or damaged parcel. " +
				"The shop caps the amount, the coupons per customer per day and its daily budget; " +
				"at most one coupon per order, and at most one coupon or refund per answer.",
			Parameters: json.RawMessage(`{"type":"object","properties":{` +
				`"order_id":{"type":"string","description":"the order the apology is for, if any"},` +
				`"amount_cents":{"type":"integer","minimum":1,"description":"coupon value in cents"},` +
				`"reason":{"type":"string","description":"why the coupon is issued"}},` +
				`"required":["amount_cents","reason"],"additionalProperties":false}`),
		},
		{
			Name: ToolRequestRefund,
			Description: "Request a refund of one of the customer's orders. Without amount_cents the whole " +
				"order is refunded. Refunds above the shop's automatic limit go to a human agent.",
			Parameters: json.RawMessage(`{"type":"object","properties":{` +
				`"order_id":{"type":"string","description":"the order to refund"},` +
				`"amount_cents":{"type":"integer","minimum":1,"description":"amount to refund in cents; omit for the whole order"},` +
				`"reason":{"type":"string","description":"why the customer wants a refund"}},` +
				`"required":["order_id","reason"],"additionalProperties":false}`),
		},
		{
			Name:        ToolHandoff,
			Description: "Hand the conversation to a human agent, when the customer asks for a person or the request is beyond what you may do.",
			Parameters: json.RawMessage(`{"type":"object","properties":{` +
				`"reason":{"type":"string","description":"why a human is needed"}},` +
				`"required":["reason"],"additionalProperties":false}`),
		},
	}
}

// ToolCall is one call of a tool by the LLM, in the context of the message
// being answered.
type ToolCall struct {
	Shop           string
	User           string
	ConversationID string
	// MessageID is the message being answered; it makes the actions'
	// idempotency keys deterministic, so a repeated call is one action.
	MessageID string
	// Lang is the customer's language, for texts pushed later.
	Lang texts.Lang
	// AskedAt is when the customer asked, for the time to the final
	// answer of a follow-up.
	AskedAt time.Time
	Name    string
	Args    json.RawMessage
}

// ToolResult is what a tool call gives back.
type ToolResult struct {
	// Text is the tool's answer for the LLM. A refusal says why, so the
	// reply can explain it.
	Text string
	// Actions are to be inserted with the reply (storage.InsertActions in
	// its transaction); nothing has been carried out yet.
	Actions []peakdesk.Action
	// Refused is true when policy refused the request.
	Refused bool
	// Handoff asks for the conversation to be marked for a human agent.
	Handoff bool
}

// Call runs one tool call. A refusal is a result, not an error; the error
// is for failures of peakdesk itself (e.g. Postgres unreachable).
func (t *Tools) Call(ctx context.Context, c ToolCall) (ToolResult, error) {
	switch c.Name {
	case ToolLookupOrder:
		return t.lookupOrder(ctx, c)
	case ToolLookupRefund:
		return t.lookupRefund(ctx, c)
	case ToolIssueCoupon:
		return t.issueCoupon(ctx, c)
	case ToolRequestRefund:
		return t.requestRefund(ctx, c)
	case ToolHandoff:
		return ToolResult{Handoff: true,
			Text: "The conversation is handed to a human agent. Tell the customer a colleague will join shortly."}, nil
	}
	return refused("There is no tool named %q.", c.Name), nil
}

// Turn is the tools as one turn (one reply) calls them: its calls share the
// turn's allowance of one money promise — a coupon or a refund — so a
// response that calls issue_coupon three times at different amounts promises
// one coupon at most.
type Turn struct {
	tools *Tools
	call  ToolCall

	mu       sync.Mutex // serialises the turn's money calls
	promised bool
}

// Turn returns the tools for one turn answering c's message in c's
// conversation (c.Name and c.Args are ignored).
func (t *Tools) Turn(c ToolCall) *Turn {
	return &Turn{tools: t, call: c}
}

// Call runs tool name with args in the turn.
func (tt *Turn) Call(ctx context.Context, name string, args json.RawMessage) (ToolResult, error) {
	c := tt.call
	c.Name, c.Args = name, args
	if name != ToolIssueCoupon && name != ToolRequestRefund {
		return tt.tools.Call(ctx, c)
	}
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.promised {
		return refused("only one coupon or refund may be promised per answer, and one already was; " +
			"this call was not carried out."), nil
	}
	res, err := tt.tools.Call(ctx, c)
	if err == nil && len(res.Actions) > 0 {
		tt.promised = true
	}
	return res, err
}

func refused(format string, args ...any) ToolResult {
	return ToolResult{Refused: true, Text: "Refused: " + fmt.Sprintf(format, args...)}
}

func decodeArgs(name string, raw json.RawMessage, v any) *ToolResult {
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = json.RawMessage(`{}`)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		r := refused("the arguments of %s are not valid: %v.", name, err)
		return &r
	}
	return nil
}

// lookupResult is what a lookup within the answer's budget found out.
type lookupResult struct {
	order     *shopapi.Order
	logistics *shopapi.Logistics
	// mine is false when the order is unknown or someone else's; the two
	// are told apart to nobody.
	mine bool
	// unavailable is set when the shop did not answer in time or failed.
	unavailable error
}

// lookup asks the shop for order id within the lookup budget (coalesced
// with other customers' lookups of the order, and cached).
func (t *Tools) lookup(ctx context.Context, shop, user, id string) (lookupResult, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.LookupBudget)
	defer cancel()
	f, err := t.cfg.Lookups.Order(ctx, shop, id)
	switch {
	case err != nil:
		return lookupResult{unavailable: err}, nil
	case !f.Found || f.Order.UserID != user:
		return lookupResult{}, nil
	}
	return lookupResult{order: f.Order, logistics: f.Logistics, mine: true}, nil
}

func (t *Tools) lookupOrder(ctx context.Context, c ToolCall) (ToolResult, error) {
	var args struct {
		OrderID    string `json:"order_id"`
		TrackingNo string `json:"tracking_no"`
	}
	if r := decodeArgs(c.Name, c.Args, &args); r != nil {
		return *r, nil
	}
	id, tracking := strings.TrimSpace(args.OrderID), strings.TrimSpace(args.TrackingNo)
	switch {
	case id != "" && !orderIDRe.MatchString(id):
		return refused("%q is not an order number.", args.OrderID), nil
	case tracking != "" && !orderIDRe.MatchString(tracking):
		return refused("%q is not a tracking number.", args.TrackingNo), nil
	case id == "":
		// A tracking number, or the customer's recent orders: the answer
		// as the customer would be told it.
		return t.lookupAnswer(ctx, c, OrderQuestion{Topic: TopicOrder, TrackingNo: tracking})
	}
	res, err := t.lookup(ctx, c.Shop, c.User, id)
	switch {
	case err != nil:
		return ToolResult{}, fmt.Errorf("outbox: lookup_order: %w", err)
	case res.unavailable != nil:
		return t.lookupLater(c, OrderQuestion{Topic: TopicOrder, OrderID: id}, "order "+id)
	case !res.mine:
		return refused("order %s was not found for this customer; ask them to check the order number.", id), nil
	}
	return ToolResult{Text: DescribeOrder(res.order, res.logistics)}, nil
}

func (t *Tools) lookupRefund(ctx context.Context, c ToolCall) (ToolResult, error) {
	var args struct {
		OrderID string `json:"order_id"`
	}
	if r := decodeArgs(c.Name, c.Args, &args); r != nil {
		return *r, nil
	}
	id := strings.TrimSpace(args.OrderID)
	if !orderIDRe.MatchString(id) {
		return refused("a refund's state needs the order number; ask the customer for it."), nil
	}
	return t.lookupAnswer(ctx, c, OrderQuestion{Topic: TopicRefund, OrderID: id})
}

// lookupAnswer answers q for the LLM with what the customer would be told
// (in English: the model answers in the customer's language).
func (t *Tools) lookupAnswer(ctx context.Context, c ToolCall, q OrderQuestion) (ToolResult, error) {
	lctx, cancel := context.WithTimeout(ctx, t.cfg.LookupBudget)
	defer cancel()
	a, err := t.desk.answer(lctx, c.Shop, c.User, texts.EN, q)
	if err != nil {
		what := "the customer's orders"
		if id := cmp.Or(q.OrderID, q.TrackingNo); id != "" {
			what = "order " + id
		}
		return t.lookupLater(c, q, what)
	}
	return ToolResult{Text: "What the shop's order system says: " + a.text}, nil
}

// lookupLater answers a lookup the shop was too slow for: the customer is
// told now that we are checking, and an order.followup pushes the facts.
func (t *Tools) lookupLater(c ToolCall, q OrderQuestion, what string) (ToolResult, error) {
	a, err := t.followUp(DirectCall{Shop: c.Shop, User: c.User, ConversationID: c.ConversationID,
		MessageID: c.MessageID, Lang: c.Lang, Question: q, AskedAt: c.AskedAt})
	if err != nil {
		return ToolResult{}, err
	}
	return ToolResult{Actions: []peakdesk.Action{a},
		Text: fmt.Sprintf("The shop's order system is slow right now. Tell the customer we are checking %s "+
			"and will send the details in this conversation shortly.", what)}, nil
}

func (t *Tools) issueCoupon(ctx context.Context, c ToolCall) (ToolResult, error) {
	var args struct {
		OrderID     string `json:"order_id"`
		AmountCents int64  `json:"amount_cents"`
		Reason      string `json:"reason"`
	}
	if r := decodeArgs(c.Name, c.Args, &args); r != nil {
		return *r, nil
	}
	id := strings.TrimSpace(args.OrderID)
	settings, err := t.cfg.Shop.Settings(ctx, c.Shop)
	if err != nil {
		return ToolResult{}, fmt.Errorf("outbox: issue_coupon: %w", err)
	}
	capCents := capOr(settings.CouponMaxCents, DefaultCouponMaxCents)
	switch {
	case args.AmountCents <= 0:
		return refused("a coupon needs a positive amount_cents."), nil
	case args.AmountCents > capCents:
		return refused("a coupon can be at most %s in this shop; offer at most that, or hand the customer to a human agent.",
			money(capCents)), nil
	case id != "" && !orderIDRe.MatchString(id):
		return refused("%q is not an order number.", args.OrderID), nil
	}
	if id != "" {
		res, err := t.lookup(ctx, c.Shop, c.User, id)
		switch {
		case err != nil:
			return ToolResult{}, fmt.Errorf("outbox: issue_coupon: %w", err)
		case res.unavailable != nil:
			return refused("the shop's order system did not answer, so order %s could not be checked; "+
				"tell the customer to try again in a few minutes or offer a human agent.", id), nil
		case !res.mine:
			return refused("order %s was not found for this customer.", id), nil
		}
	}
	// The shop's limits are enforced by Postgres as the grant is taken.
	g, err := t.cfg.DB.TakeGrant(ctx, storage.GrantRequest{Shop: c.Shop, Kind: storage.GrantCoupon, User: c.User,
		ConversationID: c.ConversationID, OrderID: id, AmountCents: args.AmountCents, Lease: t.cfg.GrantLease})
	if err != nil {
		return ToolResult{}, fmt.Errorf("outbox: issue_coupon: %w", err)
	}
	switch g.Refusal {
	case storage.RefusedOrderTaken:
		return refused("a coupon was already issued for order %s; only one per order is allowed.", id), nil
	case storage.RefusedUserLimit:
		return refused("this customer already received the %d coupon(s) per 24 hours this shop allows; "+
			"apologise without a coupon, or offer a human agent.", g.Limit), nil
	case storage.RefusedShopBudget:
		return ToolResult{Refused: true, Handoff: true,
			Text: "Refused: the shop's coupon budget for today is used up. The conversation is handed to a human " +
				"agent; tell the customer a colleague will follow up on their request."}, nil
	}
	a, err := newAction(peakdesk.ActionCouponIssue, c.Shop, c.ConversationID, t.cfg.MaxAttempts,
		CouponPayload{OrderID: id, UserID: c.User, AmountCents: args.AmountCents, Reason: truncate(args.Reason, maxReasonRunes)},
		c.MessageID, id, strconv.FormatInt(args.AmountCents, 10))
	if err != nil {
		return ToolResult{}, err
	}
	a.GrantID = g.ID
	text := fmt.Sprintf("A coupon of %s will be issued to the customer", money(args.AmountCents))
	if id != "" {
		text += " for order " + id
	}
	return ToolResult{Actions: []peakdesk.Action{a},
		Text: text + "; it appears in their account within a few minutes."}, nil
}

func (t *Tools) requestRefund(ctx context.Context, c ToolCall) (ToolResult, error) {
	var args struct {
		OrderID     string `json:"order_id"`
		AmountCents *int64 `json:"amount_cents"`
		Reason      string `json:"reason"`
	}
	if r := decodeArgs(c.Name, c.Args, &args); r != nil {
		return *r, nil
	}
	id := strings.TrimSpace(args.OrderID)
	switch {
	case !orderIDRe.MatchString(id):
		return refused("a refund needs the order number; ask the customer for it."), nil
	case args.AmountCents != nil && *args.AmountCents <= 0:
		return refused("a refund amount must be positive."), nil
	}
	res, err := t.lookup(ctx, c.Shop, c.User, id)
	switch {
	case err != nil:
		return ToolResult{}, fmt.Errorf("outbox: request_refund: %w", err)
	case res.unavailable != nil:
		return refused("the shop's order system did not answer, so order %s could not be checked; "+
			"tell the customer to try again in a few minutes or offer a human agent.", id), nil
	case !res.mine:
		return refused("order %s was not found for this customer.", id), nil
	}
	amount := res.order.AmountCents
	if args.AmountCents != nil {
		amount = *args.AmountCents
	}
	if amount > res.order.AmountCents {
		return refused("%s is more than order %s cost (%s).", money(amount), id, money(res.order.AmountCents)), nil
	}
	settings, err := t.cfg.Shop.Settings(ctx, c.Shop)
	if err != nil {
		return ToolResult{}, fmt.Errorf("outbox: request_refund: %w", err)
	}
	if limit := capOr(settings.RefundMaxCents, DefaultRefundMaxCents); amount > limit {
		return ToolResult{Refused: true, Handoff: true,
			Text: fmt.Sprintf("A refund of %s is above the %s this desk may approve; the conversation is handed to a "+
				"human agent who will decide. Tell the customer so.", money(amount), money(limit))}, nil
	}
	// One live refund per order, enforced by Postgres as the grant is taken.
	g, err := t.cfg.DB.TakeGrant(ctx, storage.GrantRequest{Shop: c.Shop, Kind: storage.GrantRefund, User: c.User,
		ConversationID: c.ConversationID, OrderID: id, AmountCents: amount, Lease: t.cfg.GrantLease})
	if err != nil {
		return ToolResult{}, fmt.Errorf("outbox: request_refund: %w", err)
	}
	if g.Refusal != "" {
		return refused("a refund of order %s was already requested; the customer is notified when it completes.", id), nil
	}
	a, err := newAction(peakdesk.ActionRefundRequest, c.Shop, c.ConversationID, t.cfg.MaxAttempts,
		RefundPayload{OrderID: id, UserID: c.User, AmountCents: amount, Reason: truncate(args.Reason, maxReasonRunes)},
		c.MessageID, id)
	if err != nil {
		return ToolResult{}, err
	}
	a.GrantID = g.ID
	return ToolResult{Actions: []peakdesk.Action{a},
		Text: fmt.Sprintf("A refund of %s for order %s has been requested; the shop processes it and the customer "+
			"is notified when it completes.", money(amount), id)}, nil
}

// DescribeOrder is a short English account of an order and its parcel, for
// the LLM or a follow-up reply.
func DescribeOrder(o *shopapi.Order, l *shopapi.Logistics) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Order %s: %s, total %s", o.ID, o.Status, money(o.AmountCents))
	if o.Currency != "" && o.Currency != "CNY" {
		fmt.Fprintf(&b, " (%s)", o.Currency)
	}
	if len(o.Items) > 0 {
		names := make([]string, 0, len(o.Items))
		for _, it := range o.Items {
			names = append(names, fmt.Sprintf("%s ×%d", it.Name, it.Quantity))
		}
		b.WriteString("; items: " + strings.Join(names, ", "))
	}
	b.WriteString(".")
	if l != nil {
		status := strings.ReplaceAll(l.Status, "_", " ")
		if l.TrackingNo != "" {
			fmt.Fprintf(&b, " Parcel %s %s: %s.", l.Carrier, l.TrackingNo, status)
		} else {
			fmt.Fprintf(&b, " Parcel: %s.", status)
		}
		if n := len(l.Events); n > 0 {
			ev := l.Events[n-1]
			fmt.Fprintf(&b, " Latest: %s, %s — %s.", ev.At.Format("2006-01-02 15:04 MST"), ev.Location, ev.Description)
		}
	}
	return b.String()
}

func money(cents int64) string {
	return fmt.Sprintf("CNY %d.%02d", cents/100, cents%100)
}

func capOr(v *int64, def int64) int64 {
	if v != nil {
		return *v
	}
	return def
}

func truncate(s string, runes int) string {
	s = strings.TrimSpace(s)
	i := 0
	for pos := range s {
		if i == runes {
			return s[:pos]
		}
		i++
	}
	return s
}
