package outbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// orderTools are Tools whose lookups share Redis (under a prefix of the
// test's own), with the order answers' metrics in reg.
func orderTools(t *testing.T, e *testEnv, lib *texts.Library) (*outbox.Tools, *prometheus.Registry) {
	t.Helper()
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	var b [6]byte
	_, _ = rand.Read(b[:])
	reg := prometheus.NewRegistry()
	lookups, err := outbox.NewLookups(outbox.LookupsConfig{Shop: e.shop, Redis: rdb,
		KeyPrefix: "pdtest:" + hex.EncodeToString(b[:]) + ":", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lookups.Wait)
	tools, err := outbox.NewTools(outbox.ToolsConfig{DB: e.db, Shop: e.shop, Lookups: lookups, Texts: lib,
		LookupBudget: 30 * time.Second, Registerer: reg}) // a loaded machine is no slow shop
	if err != nil {
		t.Fatal(err)
	}
	return tools, reg
}

func ask(t *testing.T, tools *outbox.Tools, user, text string) outbox.DirectAnswer {
	t.Helper()
	q, ok := outbox.ParseOrderQuestion(text)
	if !ok {
		t.Fatalf("%q is not an order question", text)
	}
	a, err := tools.AnswerOrder(context.Background(), outbox.DirectCall{Shop: "demo", User: user,
		ConversationID: strings.Repeat("c", 32), MessageID: "m-" + user, Lang: texts.Detect(text, texts.ZH),
		Question: q, AskedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// What counts as an order question, and which number it names.
func TestParseOrderQuestion(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]*outbox.OrderQuestion{
		"我的订单到哪了":                                      {Topic: outbox.TopicOrder},
		"我的快递怎么还没到？":                                   {Topic: outbox.TopicOrder},
		"Where is my package?":                         {Topic: outbox.TopicOrder},
		"订单1234567到哪了？":                                {Topic: outbox.TopicOrder, OrderID: "1234567"},
		"订单１２３４５６７到哪了？":                                {Topic: outbox.TopicOrder, OrderID: "1234567"},
		"Has order 1234567 shipped yet?":               {Topic: outbox.TopicOrder, OrderID: "1234567"},
		"快递单号 SF1234567890 到哪了":                        {Topic: outbox.TopicOrder, TrackingNo: "SF1234567890"},
		"订单1234567退款到哪一步了":                             {Topic: outbox.TopicRefund, OrderID: "1234567"},
		"When will I get my refund for order 1234567?": {Topic: outbox.TopicRefund, OrderID: "1234567"},
		"退款进度怎么样了":                                     {Topic: outbox.TopicRefund},
		// Not order questions: a refund request, a promotion, pre-sale.
		"订单1234567我要退款，商品有质量问题":             nil,
		"I want a refund for order 1234567": nil,
		"订单满300减50吗？":                       nil,
		"双11满减怎么算？":                         nil,
		"Is the down jacket in stock?":      nil,
		// A phone number is not an order number.
		"我的订单到哪了 电话13812345678": {Topic: outbox.TopicOrder},
	} {
		got, ok := outbox.ParseOrderQuestion(text)
		switch {
		case want == nil && ok:
			t.Errorf("%q taken for an order question: %+v", text, got)
		case want != nil && (!ok || got != *want):
			t.Errorf("%q: %+v %v, want %+v", text, got, ok, *want)
		}
	}
}

// "我的订单到哪了" without a number: the customer's recent orders answer —
// none is said so, one open order is answered about (its parcel, last scan
// and ETA), several are listed to choose from; in the customer's language.
func TestNoNumberLooksAtTheRecentOrders(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	tools, _ := orderTools(t, e, nil)
	one := shopsim.CustomerOrderIDs("u1")[0]
	several := shopsim.CustomerOrderIDs("u3")
	for _, c := range []struct {
		user, text string
		want       []string
		not        []string
	}{
		{"u4", "我的订单到哪了", []string{"没有查到您最近的订单"}, nil},
		{"u4", "Where is my order?", []string{"We found no recent orders"}, nil},
		{"u1", "我的订单到哪了", []string{"您的订单 " + one + " 查到了：已发货", "最新动态：", "预计", "送达"}, nil},
		{"u1", "where is my package", []string{"Update on your order " + one + ": shipped", "Latest:", "Expected by"}, nil},
		// One open order and an old completed one: the open one.
		{"u2", "我的快递到哪了", []string{"查到了：已发货"}, []string{"已完成"}},
		// Two open: which one? (the completed one is left out).
		{"u3", "我的订单到哪了", []string{"您最近有 2 个订单", several[2], several[1], "请回复订单号"}, []string{several[0]}},
		{"u3", "Where is my order?", []string{"You have 2 recent orders", "Item ", "ordered Nov 11"}, nil},
	} {
		a := ask(t, tools, c.user, c.text)
		if a.FollowUp || len(a.Actions) > 0 {
			t.Errorf("%s %q: a follow-up from a shop that answers: %+v", c.user, c.text, a)
		}
		// Only "no recent orders" is general (a FAQ entry may do better).
		if general := c.user == "u4"; a.General != general {
			t.Errorf("%s %q: General %v, want %v", c.user, c.text, a.General, general)
		}
		for _, w := range c.want {
			if !strings.Contains(a.Text, w) {
				t.Errorf("%s %q: %q lacks %q", c.user, c.text, a.Text, w)
			}
		}
		for _, w := range c.not {
			if strings.Contains(a.Text, w) {
				t.Errorf("%s %q: %q has %q", c.user, c.text, a.Text, w)
			}
		}
	}
	// With a number: someone else's order is "not found", like no order.
	if a := ask(t, tools, "u1", "订单"+several[2]+"到哪了"); !strings.Contains(a.Text, "没有查到订单 "+several[2]) {
		t.Errorf("another customer's order: %q", a.Text)
	}
	// A tracking number finds the customer's order.
	o, _ := shopsim.CatalogueOrder("demo", one)
	if a := ask(t, tools, "u1", "运单号 "+o.Logistics.TrackingNo+" 到哪了"); !strings.Contains(a.Text, "您的订单 "+one) {
		t.Errorf("by tracking number: %q", a.Text)
	}
}

// "退款到哪一步了": the refund's state and expected date, or that there is
// none; through the lookup_refund tool for the LLM too.
func TestRefundStatus(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	tools, _ := orderTools(t, e, nil)
	id := "1234567" // the catalogue's, of u7
	if a := ask(t, tools, "u7", "订单"+id+"退款到哪一步了"); !strings.Contains(a.Text, "订单 "+id+" 目前没有退款申请") || a.General {
		t.Fatalf("no refund: %q (general %v: the customer named the order)", a.Text, a.General)
	}
	// Asked without a number, "no refund on your order" is general: "退款多久
	// 能到账？" may be a question about refunds at large.
	if a := ask(t, tools, "u1", "退款多久能到账？"); !strings.Contains(a.Text, "目前没有退款申请") || !a.General {
		t.Fatalf("no refund, no number: %q (general %v)", a.Text, a.General)
	}
	created := time.Date(2026, 11, 11, 2, 0, 0, 0, time.UTC)
	e.sim.AddRefund("demo", id, 5000, "approved", created)
	// The answer above is cached for a while: another order's customer asks.
	id2 := "7654327"
	e.sim.AddRefund("demo", id2, 1200, "processing", created)
	a := ask(t, tools, "u7", "订单"+id2+"的退款到哪一步了？")
	if want := "订单 " + id2 + " 的退款 ¥12.00：退款处理中，预计 11月14日 前到账。"; a.Text != want {
		t.Fatalf("refund:\n got %q\nwant %q", a.Text, want)
	}
	a = ask(t, tools, "u7", "When will I get my refund for order "+id2+"?")
	if !strings.Contains(a.Text, "Your refund of CNY 12.00 for order "+id2+": being processed, expected back by Nov 14") {
		t.Fatalf("refund en: %q", a.Text)
	}
	r, err := tools.Call(context.Background(), outbox.ToolCall{Shop: "demo", User: "u7", ConversationID: strings.Repeat("c", 32),
		MessageID: "m1", Name: outbox.ToolLookupRefund, Args: json.RawMessage(`{"order_id":"` + id2 + `"}`)})
	if err != nil || r.Refused || !strings.Contains(r.Text, "being processed") {
		t.Fatalf("lookup_refund: %+v %v", r, err)
	}
	// Someone else's order's refund is not told.
	if a := ask(t, tools, "u1", "订单"+id2+"退款到哪一步了"); strings.Contains(a.Text, "¥12.00") {
		t.Fatalf("another customer's refund: %q", a.Text)
	}
}

// A shop's own wording is used for its order answers, in its language.
func TestOrderAnswersUseTheShopsTemplates(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	tpl := "亲，您的宝贝（订单 {{.ID}}）{{.Status}}{{if .ETA}}，预计{{.ETA}}到{{end}}～"
	if err := texts.Validate(texts.ZH, texts.OrderUpdate, tpl); err != nil {
		t.Fatal(err)
	}
	if err := e.db.PutShopText(ctx, storage.ShopText{ShopID: "demo", Lang: "zh", Key: string(texts.OrderUpdate), Template: tpl}); err != nil {
		t.Fatal(err)
	}
	lib := texts.NewLibrary(func(ctx context.Context, shop string) ([]texts.Override, error) {
		rows, err := e.db.ShopTexts(ctx, shop)
		out := make([]texts.Override, len(rows))
		for i, r := range rows {
			out[i] = texts.Override{Lang: texts.Lang(r.Lang), Key: texts.Key(r.Key), Template: r.Template}
		}
		return out, err
	}, time.Second, nil)
	tools, _ := orderTools(t, e, lib)
	one := shopsim.CustomerOrderIDs("u1")[0]
	if a := ask(t, tools, "u1", "我的订单到哪了"); a.Text != "亲，您的宝贝（订单 "+one+"）已发货，预计11月14日到～" {
		t.Fatalf("the shop's zh wording: %q", a.Text)
	}
	if a := ask(t, tools, "u1", "Where is my order?"); !strings.HasPrefix(a.Text, "Update on your order "+one) {
		t.Fatalf("en, which the shop did not reword: %q", a.Text)
	}
}

// A hundred customers asking about one order at once cost the shop one
// order lookup (and one logistics lookup); the metric says the other 99
// were coalesced.
func TestManyCustomersOneOrderOneShopCall(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{LatencyMS: 200})
	tools, reg := orderTools(t, e, nil)
	id := shopsim.CustomerOrderIDs("u1")[0]
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			lang := "我的订单" + id + "到哪了"
			if i%2 == 1 {
				lang = "Where is order " + id + "?"
			}
			a := ask(t, tools, "u1", lang)
			if a.FollowUp || !strings.Contains(a.Text, id) {
				t.Errorf("customer %d: %+v", i, a)
			}
		})
	}
	wg.Wait()
	st := e.sim.Stats()
	if n := st.Requests["order"][200]; n != 1 {
		t.Fatalf("%d order lookups at the shop for 100 customers, want 1 (%v)", n, st.Requests)
	}
	if n := st.Requests["logistics"][200]; n != 1 {
		t.Fatalf("%d logistics lookups, want 1", n)
	}
	ran := testutil.ToFloat64(lookupsMetric(t, reg, "order", "ran"))
	coalesced := 0.0
	for _, o := range []string{"joined", "cached", "followed"} {
		coalesced += testutil.ToFloat64(lookupsMetric(t, reg, "order", o))
	}
	if ran != 1 || coalesced != 99 {
		t.Fatalf("lookups metric: ran %v, coalesced %v", ran, coalesced)
	}
}

func lookupsMetric(t *testing.T, reg *prometheus.Registry, kind, outcome string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != "peakdesk_order_lookups_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == kind && labels["outcome"] == outcome {
				v.Add(m.GetCounter().GetValue())
			}
		}
	}
	return v
}

// A shop that is down gets the customer "checking" at once, in their
// language, and one order.followup per message (the same message asked
// again is the same action).
func TestShopDownAnswersCheckingAndFollowsUp(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{Down: true})
	tools, _ := orderTools(t, e, nil)
	for text, want := range map[string]string{
		"我的订单到哪了":                 "正在为您查询您的订单信息",
		"Where is order 1234567?": "We are checking order 1234567",
	} {
		a := ask(t, tools, "u7", text)
		if !a.FollowUp || len(a.Actions) != 1 || !strings.HasPrefix(a.Text, want) {
			t.Fatalf("%q: %+v", text, a)
		}
		again := ask(t, tools, "u7", text)
		if again.Actions[0].IdempotencyKey != a.Actions[0].IdempotencyKey || a.Actions[0].Kind != peakdesk.ActionOrderFollowUp {
			t.Fatalf("%q: two follow-ups for one message", text)
		}
	}
}
