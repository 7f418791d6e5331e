package outbox_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
)

func newTools(t *testing.T, e *testEnv) *outbox.Tools {
	t.Helper()
	tools, err := outbox.NewTools(outbox.ToolsConfig{DB: e.db, Shop: e.shop, LookupBudget: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return tools
}

func TestToolDefinitionsAreValidSchemas(t *testing.T) {
	t.Parallel()
	tools, err := outbox.NewTools(outbox.ToolsConfig{DB: &storage.DB{}, Shop: &shopapi.Client{}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range tools.Definitions() {
		names = append(names, d.Name)
		var schema struct {
			Type       string                     `json:"type"`
			Properties map[string]json.RawMessage `json:"properties"`
			Required   []string                   `json:"required"`
		}
		if err := json.Unmarshal(d.Parameters, &schema); err != nil || schema.Type != "object" || d.Description == "" {
			t.Errorf("%s: schema %s: %v", d.Name, d.Parameters, err)
		}
		for _, r := range schema.Required {
			if _, ok := schema.Properties[r]; !ok {
				t.Errorf("%s requires undefined %q", d.Name, r)
			}
		}
	}
	if strings.Join(names, ",") != "lookup_order,lookup_refund,issue_coupon,request_refund,handoff_to_human" {
		t.Fatalf("tools: %v", names)
	}
}

// Catalogue order 1234567 belongs to user u7 and costs CNY 568.00.
func TestToolsCheckPolicyBeforePromising(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	couponCap, refundCap := int64(1000), int64(60000)
	if err := e.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "demo",
		CouponMaxCents: &couponCap, RefundMaxCents: &refundCap}); err != nil {
		t.Fatal(err)
	}
	tools := newTools(t, e)
	conv := strings.Repeat("d", 32)
	call := func(user, name, args string) outbox.ToolResult {
		t.Helper()
		r, err := tools.Call(ctx, outbox.ToolCall{Shop: "demo", User: user, ConversationID: conv, MessageID: "m1",
			Name: name, Args: json.RawMessage(args)})
		if err != nil {
			t.Fatalf("%s %s: %v", name, args, err)
		}
		return r
	}
	tests := []struct {
		name, user, tool, args string
		refused, handoff       bool
		actions                int
		text                   string
	}{
		{"own order", "u7", outbox.ToolLookupOrder, `{"order_id":"1234567"}`, false, false, 0, "Order 1234567: "},
		{"someone else's order", "u1", outbox.ToolLookupOrder, `{"order_id":"1234567"}`, true, false, 0, "not found"},
		{"no such order", "u7", outbox.ToolLookupOrder, `{"order_id":"AB-1"}`, true, false, 0, "not found"},
		{"not an order number", "u7", outbox.ToolLookupOrder, `{"order_id":"../admin"}`, true, false, 0, "not an order number"},
		{"bad arguments", "u7", outbox.ToolLookupOrder, `{"order_id":7}`, true, false, 0, "not valid"},
		{"coupon above the shop's cap", "u7", outbox.ToolIssueCoupon, `{"amount_cents":1500,"reason":"late"}`, true, false, 0, "at most CNY 10.00"},
		{"coupon for someone else's order", "u1", outbox.ToolIssueCoupon, `{"order_id":"1234567","amount_cents":500,"reason":"late"}`, true, false, 0, "not found"},
		{"refund of someone else's order", "u1", outbox.ToolRequestRefund, `{"order_id":"1234567","reason":"broken"}`, true, false, 0, "not found"},
		{"refund above the order", "u7", outbox.ToolRequestRefund, `{"order_id":"1234567","amount_cents":60000,"reason":"broken"}`, true, false, 0, "more than order"},
		{"refund without order", "u7", outbox.ToolRequestRefund, `{"reason":"broken"}`, true, false, 0, "order number"},
		{"refund above the automatic limit", "u9", outbox.ToolRequestRefund, `{"order_id":"1000999","reason":"broken"}`, true, true, 0, "human agent"},
		{"coupon", "u7", outbox.ToolIssueCoupon, `{"order_id":"1234567","amount_cents":500,"reason":"late parcel"}`, false, false, 1, "CNY 5.00"},
		{"refund of the whole order", "u7", outbox.ToolRequestRefund, `{"order_id":"1234567","reason":"broken"}`, false, false, 1, "CNY 568.00"},
		{"human", "u7", outbox.ToolHandoff, `{"reason":"wants a person"}`, false, true, 0, "human agent"},
		{"unknown tool", "u7", "drop_tables", `{}`, true, false, 0, "no tool"},
	}
	var promised []peakdesk.Action
	for _, tc := range tests {
		r := call(tc.user, tc.tool, tc.args)
		if r.Refused != tc.refused || r.Handoff != tc.handoff || len(r.Actions) != tc.actions || !strings.Contains(r.Text, tc.text) {
			t.Errorf("%s: %+v; want refused %v handoff %v, %d actions, text with %q",
				tc.name, r, tc.refused, tc.handoff, tc.actions, tc.text)
		}
		promised = append(promised, r.Actions...)
	}
	if len(promised) != 2 {
		t.Fatalf("promised %d actions", len(promised))
	}
	coupon, refund := promised[0], promised[1]
	var cp outbox.CouponPayload
	var rp outbox.RefundPayload
	_ = json.Unmarshal(coupon.Payload, &cp)
	_ = json.Unmarshal(refund.Payload, &rp)
	if coupon.Kind != peakdesk.ActionCouponIssue || coupon.ShopID != "demo" || coupon.ConversationID != conv ||
		cp != (outbox.CouponPayload{OrderID: "1234567", UserID: "u7", AmountCents: 500, Reason: "late parcel"}) {
		t.Errorf("coupon action: %+v %+v", coupon, cp)
	}
	if refund.Kind != peakdesk.ActionRefundRequest || rp.AmountCents != 56800 || rp.UserID != "u7" {
		t.Errorf("refund action: %+v %+v", refund, rp)
	}
	// The same call in the same message (a retried turn) is the same action,
	// with the grant taken again.
	again := call("u7", outbox.ToolIssueCoupon, `{"order_id":"1234567","amount_cents":500,"reason":"late parcel"}`)
	if len(again.Actions) != 1 || again.Actions[0].IdempotencyKey != coupon.IdempotencyKey {
		t.Fatalf("a repeated tool call: %+v; want the same idempotency key", again)
	}

	// Once promised (stored with the reply), a second coupon or refund is refused.
	e.enqueue(t, again.Actions[0], refund)
	if r := call("u7", outbox.ToolIssueCoupon, `{"amount_cents":300,"reason":"still late"}`); !r.Refused || !strings.Contains(r.Text, "already") {
		t.Errorf("second coupon in the conversation: %+v", r)
	}
	if r := call("u7", outbox.ToolRequestRefund, `{"order_id":"1234567","reason":"again"}`); !r.Refused || !strings.Contains(r.Text, "already") {
		t.Errorf("second refund of the order: %+v", r)
	}
}

// A shop that is down or slower than the budget gets the customer an
// immediate "checking" answer and an order.followup action.
func TestLookupOrderFallsBackToAFollowUp(t *testing.T) {
	t.Parallel()
	for _, faults := range []shopsim.Faults{{Down: true}, {LatencyMS: 2000}} {
		e := setup(t, faults)
		tools := newTools(t, e)
		r, err := tools.Call(context.Background(), outbox.ToolCall{Shop: "demo", User: "u7",
			ConversationID: strings.Repeat("d", 32), MessageID: "m1", Name: outbox.ToolLookupOrder,
			Args: json.RawMessage(`{"order_id":"1234567"}`)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Refused || len(r.Actions) != 1 || !strings.Contains(r.Text, "checking order 1234567") {
			t.Fatalf("%+v: %+v", faults, r)
		}
		a := r.Actions[0]
		var p outbox.FollowUpPayload
		_ = json.Unmarshal(a.Payload, &p)
		if a.Kind != peakdesk.ActionOrderFollowUp || a.MaxAttempts != outbox.DefaultFollowUpMaxAttempts ||
			p != (outbox.FollowUpPayload{OrderID: "1234567", Topic: outbox.TopicOrder, UserID: "u7", MessageID: "m1"}) {
			t.Fatalf("follow-up: %+v %+v", a, p)
		}
	}
}
