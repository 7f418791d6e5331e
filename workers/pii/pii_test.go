package pii_test

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/workers/pii"
)

func TestMask(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in, want string
		counts         map[string]int
	}{
		{"cn mobile", "我的手机号是13812345678，请回电", "我的手机号是138****5678，请回电", map[string]int{pii.Phone: 1}},
		{"cn mobile with +86 and spaces", "call +86 138 1234 5678 now", "call +86 138****5678 now", map[string]int{pii.Phone: 1}},
		{"cn mobile with dashes", "电话138-1234-5678", "电话138****5678", map[string]int{pii.Phone: 1}},
		{"international", "reach me at +1 415 555 2671.", "reach me at +141****2671.", map[string]int{pii.Phone: 1}},
		{"cn landline", "座机021-12345678", "座机021****5678", map[string]int{pii.Phone: 1}},
		{"id card with X", "身份证11010519491231002X", "身份证**************002X", map[string]int{pii.IDCard: 1}},
		{"id card lower x", "id 44030419900307123x.", "id **************123X.", map[string]int{pii.IDCard: 1}},
		{"bank card", "卡号6222021234567890128", "卡号***************0128", map[string]int{pii.BankCard: 1}},
		{"bank card in groups", "card 4111 1111 1111 1111 thanks", "card ************1111 thanks", map[string]int{pii.BankCard: 1}},
		{"email", "邮箱 zhang.san+shop@example.com.cn 谢谢", "邮箱 z***@example.com.cn 谢谢", map[string]int{pii.Email: 1}},
		{"email made of a phone number", "13812345678@163.com", "1***@163.com", map[string]int{pii.Email: 1}},
		{"several", "手机13812345678，邮箱a@b.io，卡4111111111111111",
			"手机138****5678，邮箱a***@b.io，卡************1111",
			map[string]int{pii.Phone: 1, pii.Email: 1, pii.BankCard: 1}},
		{"full-width digits", "手机１３８１２３４５６７８，邮箱ａｂｃ＠ｑｑ．ｃｏｍ", "手机138****5678，邮箱a***@qq.com",
			map[string]int{pii.Phone: 1, pii.Email: 1}},
		{"two phones", "13812345678 或 13987654321", "138****5678 或 139****4321", map[string]int{pii.Phone: 2}},

		// Format characters (category Cf) do not hide a number.
		{"zero-width-split phone", "手机138\u200b0013\u200b8000谢谢", "手机138****8000谢谢", map[string]int{pii.Phone: 1}},
		{"word-joiner and BOM split phone", "call 138\u20601234\ufeff5678", "call 138****5678", map[string]int{pii.Phone: 1}},
		{"soft hyphens in a phone", "138\u00ad1234\u00ad5678", "138****5678", map[string]int{pii.Phone: 1}},
		{"zero-width-split id card", "身份证1101051949\u200c1231\u200d002X", "身份证**************002X",
			map[string]int{pii.IDCard: 1}},
		{"zero-width-split old id card", "身份证110105\u200b491231\u200b002", "身份证***********1002",
			map[string]int{pii.IDCard: 1}},
		{"zero-width-split bank card", "卡号6222\u200b0212\u200b3456\u200b7890\u200b128", "卡号***************0128",
			map[string]int{pii.BankCard: 1}},
		{"zero-width-split email", "mail z\u200bhang@exa\u200bmple.com", "mail z***@example.com", map[string]int{pii.Email: 1}},
		{"bidi controls around a phone stay", "\u202d13812345678\u202c", "\u202d138****5678\u202c", map[string]int{pii.Phone: 1}},
		{"emoji joined by ZWJ survive", "👨\u200d👩\u200d👧 13812345678", "👨\u200d👩\u200d👧 138****5678", map[string]int{pii.Phone: 1}},

		// Old 15-digit ID cards: province, then a birth date YYMMDD.
		{"old id card", "身份证110105491231002", "身份证***********1002", map[string]int{pii.IDCard: 1}},
		{"old id card born on a leap day", "id 440304960229123.", "id ***********9123.", map[string]int{pii.IDCard: 1}},
		{"old id card full-width", "身份证号１１０１０５４９１２３１００２", "身份证号***********1002", map[string]int{pii.IDCard: 1}},

		// Left alone.
		{"card failing luhn", "卡号4111111111111112", "卡号4111111111111112", nil},
		{"id card with a bad date", "320106199913010019", "320106199913010019", nil},
		{"18 digits passing luhn, not an id card, is a card", "320106199913011230", "**************1230",
			map[string]int{pii.BankCard: 1}},
		{"id card with a bad checksum", "110105194912310021", "110105194912310021", nil},
		{"order number passing luhn", "订单号4111111111111111还没发货", "订单号4111111111111111还没发货", nil},
		{"order hash", "order #6222021234567890128 is late", "order #6222021234567890128 is late", nil},
		{"mobile inside a longer number", "单号9913812345678999", "单号9913812345678999", nil},
		{"not a mobile prefix", "12345678901", "12345678901", nil},
		{"prices and dates", "双11满300减50，2024-11-11 00:00开始", "双11满300减50，2024-11-11 00:00开始", nil},
		{"short numbers", "3件商品，订单123456", "3件商品，订单123456", nil},
		{"already masked", "138****5678", "138****5678", nil},
		{"15 digits, no province", "编号990105491231002", "编号990105491231002", nil},
		{"15 digits, month 13", "编号110105491331002", "编号110105491331002", nil},
		{"15 digits, 30 February", "编号110105490230002", "编号110105490230002", nil},
		{"15 digits, 29 February 1900", "编号110105000229002", "编号110105000229002", nil},
		{"15 digits after an order word", "订单号110105491231002还没到", "订单号110105491231002还没到", nil},
		{"15 digits after a tracking word", "运单110105491231002", "运单110105491231002", nil},
		{"16-digit order number holding an old id", "1101054912310021", "1101054912310021", nil},
		{"15-digit tracking number with a carrier prefix, no date", "SF123456789012345", "SF123456789012345", nil},
		{"zero-width joins into a longer number", "1\u200b13812345678", "1\u200b13812345678", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, counts := pii.Mask(tc.in)
			if got != tc.want {
				t.Errorf("Mask(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if !maps.Equal(counts, tc.counts) {
				t.Errorf("counts %v, want %v", counts, tc.counts)
			}
			// Masking is idempotent: masked text has nothing left to mask.
			if again, c := pii.Mask(got); again != got || c != nil {
				t.Errorf("second Mask(%q) = %q %v", got, again, c)
			}
		})
	}
}

func TestMaskExceptKeepsPublishedContacts(t *testing.T) {
	t.Parallel()
	faqAnswer := "请发邮件到 service@shop.example 或拨打 13800000000"
	keep := pii.Values(faqAnswer)
	got, counts := pii.MaskExcept("您可以联系 service@shop.example，或把手机13812345678告诉我们", keep)
	want := "您可以联系 service@shop.example，或把手机138****5678告诉我们"
	if got != want || !maps.Equal(counts, map[string]int{pii.Phone: 1}) {
		t.Errorf("got %q %v, want %q and one phone", got, counts, want)
	}
}

func TestFind(t *testing.T) {
	t.Parallel()
	text := "a@b.co 电话１３８１２３４５６７８"
	found := pii.Find(text)
	if len(found) != 2 || found[0].Kind != pii.Email || found[1].Kind != pii.Phone {
		t.Fatalf("found %+v", found)
	}
	for _, f := range found {
		if text[f.Start:f.End] != f.Value {
			t.Errorf("%+v does not point at its value", f)
		}
	}
	if strings.Contains(text, "*") {
		t.Error("Find changed the text")
	}
}

func FuzzMask(f *testing.F) {
	for _, s := range []string{"13812345678", "a@b.co", "4111 1111 1111 1111", "11010519491231002X", "＋86 138"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, counts := pii.Mask(s)
		if counts == nil && got != s {
			t.Errorf("text changed without a count: %q -> %q", s, got)
		}
		for _, found := range pii.Find(got) {
			t.Errorf("masked text still holds %s %q", found.Kind, found.Value)
		}
	})
}

func ExampleMask() {
	text, counts := pii.Mask("手机13812345678，邮箱zhang@example.com")
	fmt.Println(text, counts)
	// Output: 手机138****5678，邮箱z***@example.com map[email:1 phone:1]
}

func TestStripFormat(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"plain 文本 13812345678", "plain 文本 13812345678"},
		{"退\u200b款", "退款"},
		{"\ufeff紧\u00ad急\u2060 urgent\u200e\u200f", "紧急 urgent"},
		{"\u202eevil\u202c \u2066iso\u2069", "evil iso"},
		{"👨\u200d👩", "👨👩"},
		{"tag\U000E0041s", "tags"},
	}
	for _, tc := range cases {
		if got := pii.StripFormat(tc.in); got != tc.want {
			t.Errorf("StripFormat(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestFindSpansFormatCharacters(t *testing.T) {
	t.Parallel()
	text := "电话\u200b138\u200b1234\u200b5678\u200b。"
	found := pii.Find(text)
	if len(found) != 1 || found[0].Value != "138\u200b1234\u200b5678" {
		t.Fatalf("found %+v", found)
	}
	if text[found[0].Start:found[0].End] != found[0].Value {
		t.Errorf("%+v does not point at its value", found[0])
	}
	// Values are normal forms, so a keep set matches however a value is written.
	keep := pii.Values("热线 13812345678")
	if got, counts := pii.MaskExcept(text, keep); got != text || counts != nil {
		t.Errorf("MaskExcept with the value kept = %q %v, want it unchanged", got, counts)
	}
}
