package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// One answer may promise one coupon or refund: a response that calls
// issue_coupon three times at different amounts promises the first only.
func TestOneMoneyPromisePerTurn(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	if err := e.db.SetCouponPolicy(ctx, "demo", storage.CouponPolicy{PerUserPerDay: 10, BudgetPerDayCents: 100000}); err != nil {
		t.Fatal(err)
	}
	turn := newTools(t, e).Turn(outbox.ToolCall{Shop: "demo", User: "u7", ConversationID: strings.Repeat("a", 32),
		MessageID: "m1"})
	promised := 0
	for i, cents := range []int{300, 500, 900} {
		r, err := turn.Call(ctx, outbox.ToolIssueCoupon, json.RawMessage(fmt.Sprintf(`{"amount_cents":%d,"reason":"late"}`, cents)))
		if err != nil {
			t.Fatal(err)
		}
		promised += len(r.Actions)
		if i > 0 && (!r.Refused || !strings.Contains(r.Text, "one coupon or refund")) {
			t.Errorf("call %d: %+v; want a refusal", i+1, r)
		}
	}
	// A refund in the same turn is a money promise too.
	r, err := turn.Call(ctx, outbox.ToolRequestRefund, json.RawMessage(`{"order_id":"1234567","reason":"broken"}`))
	if err != nil {
		t.Fatal(err)
	}
	if promised != 1 || len(r.Actions) != 0 || !r.Refused {
		t.Fatalf("promised %d coupons and refund %+v; want one coupon and the refund refused", promised, r)
	}
	// Other tools are not limited.
	for range 2 {
		if r, err := turn.Call(ctx, outbox.ToolLookupOrder, json.RawMessage(`{"order_id":"1234567"}`)); err != nil || r.Refused {
			t.Fatalf("lookup: %+v, %v", r, err)
		}
	}
	// A refused first call does not use up the turn's promise: the model
	// may offer a smaller coupon.
	turn2 := newTools(t, e).Turn(outbox.ToolCall{Shop: "demo", User: "u8", ConversationID: strings.Repeat("b", 32),
		MessageID: "m2"})
	if r, _ := turn2.Call(ctx, outbox.ToolIssueCoupon, json.RawMessage(`{"amount_cents":999999,"reason":"late"}`)); !r.Refused {
		t.Fatalf("coupon above the cap: %+v", r)
	}
	if r, _ := turn2.Call(ctx, outbox.ToolIssueCoupon, json.RawMessage(`{"amount_cents":500,"reason":"late"}`)); len(r.Actions) != 1 {
		t.Fatalf("coupon within the cap after a refusal: %+v", r)
	}
}

// Past the shop's coupon budget of the day, a coupon is refused and the
// conversation goes to a human.
func TestCouponBudgetExhaustedHandsOff(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	if err := e.db.SetCouponPolicy(ctx, "demo", storage.CouponPolicy{PerUserPerDay: 5, BudgetPerDayCents: 1000}); err != nil {
		t.Fatal(err)
	}
	tools := newTools(t, e)
	coupon := func(user string) outbox.ToolResult {
		t.Helper()
		r, err := tools.Call(ctx, outbox.ToolCall{Shop: "demo", User: user, ConversationID: strings.Repeat(user[1:], 32),
			MessageID: "m-" + user, Name: outbox.ToolIssueCoupon, Args: json.RawMessage(`{"amount_cents":600,"reason":"late"}`)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := coupon("u1"); len(r.Actions) != 1 {
		t.Fatalf("first coupon: %+v", r)
	}
	r := coupon("u2")
	if !r.Refused || !r.Handoff || len(r.Actions) != 0 || !strings.Contains(r.Text, "budget") {
		t.Fatalf("coupon past the budget: %+v; want refused with a handoff", r)
	}
}
