package texts

import (
	"strings"
	"testing"
	"time"
)

// Every text exists in every language, and fills in without errors.
func TestCatalogIsComplete(t *testing.T) {
	t.Parallel()
	keys := map[Key]bool{}
	for _, byKey := range catalog {
		for k := range byKey {
			keys[k] = true
		}
	}
	for k := range keys {
		if samples[k] == nil {
			t.Errorf("%s has no sample data: a shop's wording of it cannot be validated", k)
		}
	}
	for lang := range catalog {
		for k := range keys {
			if _, ok := catalog[lang][k]; !ok {
				t.Errorf("%s has no %q", lang, k)
			}
			if got := Text(lang, k, samples[k]); strings.Contains(got, "texts:") || got == "" {
				t.Errorf("%s %s: %q", lang, k, got)
			}
		}
	}
}

func TestDetect(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]Lang{
		"我的快递到哪了？":           ZH,
		"where is my parcel": EN,
		"订单 1234567 where?":  ZH,
		"1234567":            ZH, // nothing tells: the fallback
		"👍":                  ZH,
		"Order #12 到了吗":      ZH,
		"Refund please!!! 🙏": EN,
	} {
		if got := Detect(text, ZH); got != want {
			t.Errorf("Detect(%q) = %s, want %s", text, got, want)
		}
	}
	if got := Detect("123", EN); got != EN {
		t.Errorf("fallback: %s", got)
	}
}

// An order update in each language: statuses translated, money and the
// last scan in the customer's words; nothing of the other language.
func TestOrderUpdate(t *testing.T) {
	t.Parallel()
	f := OrderFacts{ID: "1234567", Status: "shipped", AmountCents: 56800, Currency: "CNY",
		Items: []OrderItem{{Name: "Kettle", Quantity: 1}}, Carrier: "SF Express", TrackingNo: "SF100",
		ParcelStatus: "in_transit",
		LastScan:     &Scan{At: time.Date(2026, 11, 11, 0, 30, 0, 0, time.UTC), Location: "Shanghai hub", Description: "Arrived"}}
	zh := Text(ZH, OrderUpdate, NewOrder(ZH, f))
	want := "您的订单 1234567 查到了：已发货，金额 ¥568.00，商品：Kettle ×1。SF Express 运单号 SF100，包裹运输中。最新动态：11-11 08:30，Shanghai hub，Arrived。"
	if zh != want {
		t.Errorf("zh:\n got %q\nwant %q", zh, want)
	}
	en := Text(EN, OrderUpdate, NewOrder(EN, f))
	want = "Update on your order 1234567: shipped, total CNY 568.00; items: Kettle ×1. Parcel SF Express SF100: in transit. Latest: 11-11 08:30, Shanghai hub, Arrived."
	if en != want {
		t.Errorf("en:\n got %q\nwant %q", en, want)
	}
	// Unknown statuses are shown as the shop wrote them; no parcel, no parcel sentence.
	got := Text(EN, OrderUpdate, NewOrder(EN, OrderFacts{ID: "9", Status: "on_hold", AmountCents: 5}))
	if got != "Update on your order 9: on hold, total CNY 0.05." {
		t.Errorf("bare order: %q", got)
	}
}

func TestParseLang(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Lang{"zh": ZH, "zh-CN": ZH, "EN-us": EN, "en": EN} {
		if got, ok := ParseLang(in); !ok || got != want {
			t.Errorf("ParseLang(%q) = %q %v", in, got, ok)
		}
	}
	if _, ok := ParseLang("fr"); ok {
		t.Error("fr parsed")
	}
}

// The waiting notice gives the expected wait when there is one, and says
// so when there is none.
func TestHandoffWaiting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		lang    Lang
		minutes int
		want    string
	}{
		{ZH, 7, "预计还需等待约 7 分钟"},
		{ZH, 0, "我们会尽快为您服务"},
		{EN, 1, "about 1 minute."},
		{EN, 12, "about 12 minutes."},
		{EN, 0, "as soon as we can"},
	} {
		if got := Text(tc.lang, HandoffWaiting, Wait{Minutes: tc.minutes}); !strings.Contains(got, tc.want) {
			t.Errorf("%s, %d minutes: %q; want %q in it", tc.lang, tc.minutes, got, tc.want)
		}
	}
}
