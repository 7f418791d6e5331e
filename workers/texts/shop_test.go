package texts

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
)

var testETA = time.Date(2026, 11, 13, 10, 0, 0, 0, time.UTC)

// The answers about orders, in each language: the parcel's ETA, a
// customer's recent orders to choose from, a refund's state and date.
func TestOrderAnswersInBothLanguages(t *testing.T) {
	t.Parallel()
	f := OrderFacts{ID: "9", Status: "shipped", AmountCents: 100, Carrier: "SF Express", ParcelStatus: "in_transit",
		ETA: &testETA}
	for lang, want := range map[Lang]string{
		ZH: "您的订单 9 查到了：已发货，金额 ¥1.00。SF Express，包裹运输中。预计 11月13日 送达。",
		EN: "Update on your order 9: shipped, total CNY 1.00. Parcel SF Express: in transit. Expected by Nov 13.",
	} {
		if got := Text(lang, OrderUpdate, NewOrder(lang, f)); got != want {
			t.Errorf("%s update:\n got %q\nwant %q", lang, got, want)
		}
	}
	orders := []OrderFacts{
		{ID: "111", Status: "shipped", CreatedAt: testETA, Items: []OrderItem{{Name: "Kettle"}, {Name: "Cup"}}},
		{ID: "222", Status: "paid", CreatedAt: testETA.Add(-48 * time.Hour), Items: []OrderItem{{Name: "Lamp"}}},
	}
	for lang, want := range map[Lang]string{
		ZH: "您最近有 2 个订单，请问您问的是哪一个？\n· 订单 111：Kettle 等 2 件，11月13日 下单，已发货\n· 订单 222：Lamp，11月11日 下单，已付款，待发货\n请回复订单号。",
		EN: "You have 2 recent orders. Which one do you mean?\n· Order 111: Kettle and 1 more, ordered Nov 13, shipped\n· Order 222: Lamp, ordered Nov 11, paid, awaiting shipment\nPlease reply with the order number.",
	} {
		if got := Text(lang, OrdersChoose, NewOrderList(lang, orders)); got != want {
			t.Errorf("%s choose:\n got %q\nwant %q", lang, got, want)
		}
	}
	r := RefundFacts{OrderID: "111", AmountCents: 5000, Status: "processing", ExpectedAt: &testETA}
	for lang, want := range map[Lang]string{
		ZH: "订单 111 的退款 ¥50.00：退款处理中，预计 11月13日 前到账。",
		EN: "Your refund of CNY 50.00 for order 111: being processed, expected back by Nov 13.",
	} {
		if got := Text(lang, RefundStatus, NewRefund(lang, r)); got != want {
			t.Errorf("%s refund:\n got %q\nwant %q", lang, got, want)
		}
	}
	r.Status = "succeeded"
	if got := Text(ZH, RefundStatus, NewRefund(ZH, r)); strings.Contains(got, "预计") {
		t.Errorf("a finished refund still expects a date: %q", got)
	}
}

// A shop's own wording replaces the built-in text in its language only,
// for that shop only, with the same fields; a change shows within the
// cache's TTL; a broken store keeps the built-in text.
func TestShopOverridesTheirOwnTexts(t *testing.T) {
	t.Parallel()
	var loads atomic.Int32
	var broken atomic.Bool
	stored := []Override{{Lang: ZH, Key: OrderChecking, Template: "亲，{{.ID}} 这就帮您查～"}}
	lib := NewLibrary(func(_ context.Context, shop string) ([]Override, error) {
		loads.Add(1)
		if broken.Load() {
			return nil, errors.New("postgres down")
		}
		if shop != "mine" {
			return nil, nil
		}
		return stored, nil
	}, time.Hour, nil)
	ctx := context.Background()
	o := NewOrder(ZH, OrderFacts{ID: "123456"})
	if got := lib.Text(ctx, "mine", ZH, OrderChecking, o); got != "亲，123456 这就帮您查～" {
		t.Errorf("the shop's zh wording: %q", got)
	}
	if got := lib.Text(ctx, "mine", EN, OrderChecking, NewOrder(EN, OrderFacts{ID: "123456"})); !strings.HasPrefix(got, "We are checking order 123456") {
		t.Errorf("no en wording: the built-in text: %q", got)
	}
	if got := lib.Text(ctx, "other", ZH, OrderChecking, o); !strings.HasPrefix(got, "正在为您查询订单 123456") {
		t.Errorf("another shop: %q", got)
	}
	lib.Text(ctx, "mine", ZH, OrderChecking, o)
	if loads.Load() != 2 {
		t.Errorf("%d loads for two shops within the TTL", loads.Load())
	}
	var nilLib *Library
	if got := nilLib.Text(ctx, "mine", ZH, OrderChecking, o); !strings.HasPrefix(got, "正在为您查询") {
		t.Errorf("nil library: %q", got)
	}

	// A template stored without validation that does not fill in, and a
	// store that fails: the built-in text.
	lib2 := NewLibrary(func(context.Context, string) ([]Override, error) {
		if broken.Load() {
			return nil, errors.New("postgres down")
		}
		return []Override{{Lang: ZH, Key: OrderChecking, Template: "{{.Nope}}"}}, nil
	}, time.Nanosecond, nil)
	if got := lib2.Text(ctx, "x", ZH, OrderChecking, o); !strings.HasPrefix(got, "正在为您查询") {
		t.Errorf("broken override: %q", got)
	}
	broken.Store(true)
	if got := lib2.Text(ctx, "x", ZH, OrderChecking, o); !strings.HasPrefix(got, "正在为您查询") {
		t.Errorf("store down: %q", got)
	}
}

// A shop's wording is checked before it is stored: it must parse and fill
// in with the text's own fields.
func TestValidateAShopsWording(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		lang        Lang
		key         Key
		text, field string
	}{
		{ZH, OrderUpdate, "订单 {{.ID}}：{{.Status}}{{if .ETA}}，{{.ETA}} 到{{end}}", ""},
		{EN, OrdersChoose, "Which one?{{range .Orders}} {{.ID}}{{end}}", ""},
		{EN, RefundStatus, "{{.OrderID}} {{.Amount}} {{.Status}} {{.Expected}}", ""},
		{ZH, OrderUpdate, "订单 {{.Nope}}", "template"},            // no such field
		{ZH, OrderUpdate, "订单 {{.ID", "template"},                // does not parse
		{ZH, RefundStatus, "{{.Orders}}", "template"},            // another text's field
		{ZH, OrderUpdate, "  ", "template"},                      // empty
		{ZH, OrderUpdate, "{{if false}}x{{end}}", "template"},    // says nothing
		{ZH, "order.nope", "x", "key"},                           // no such text
		{"fr", OrderUpdate, "x", "lang"},                         // no such language
		{ZH, OrderUpdate, strings.Repeat("字", 2001), "template"}, // too long
	} {
		err := Validate(c.lang, c.key, c.text)
		var pe *peakdesk.Error
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s %s %q: %v", c.lang, c.key, c.text, err)
		case c.field != "" && (!errors.As(err, &pe) || pe.Code != peakdesk.EInvalid || pe.Field != c.field):
			t.Errorf("%s %s %q: %v, want invalid_argument on %s", c.lang, c.key, c.text, err, c.field)
		}
	}
}
