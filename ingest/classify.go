package ingest

import (
	"strings"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// Rule maps keywords to a priority. Matching is case-insensitive substring
// matching, which suits Chinese text (no word boundaries) and English alike.
type Rule struct {
	Priority peakdesk.Priority
	Keywords []string
}

// DefaultRules are the built-in rules, in Chinese and English.
var DefaultRules = []Rule{
	{peakdesk.P0, []string{
		"退款", "退货", "退钱", "投诉", "支付失败", "付款失败", "扣款", "扣了两次", "售后", "假货", "维权",
		"refund", "return", "complain", "payment failed", "charged twice", "chargeback", "fraud", "broken",
	}},
	{peakdesk.P1, []string{
		"订单", "物流", "快递", "发货", "到货", "包裹", "单号", "地址", "配送",
		"order", "shipping", "delivery", "package", "parcel", "tracking", "logistics", "shipped",
	}},
}

// Classify returns the most urgent priority whose rule matches text, or p2.
// Invisible format characters (zero-width spaces and the like) are ignored,
// so they cannot hide a keyword.
func Classify(rules []Rule, text string) peakdesk.Priority {
	lower := strings.ToLower(pii.StripFormat(text))
	best := peakdesk.P2
	for _, r := range rules {
		if r.Priority.Rank() >= best.Rank() {
			continue
		}
		for _, k := range r.Keywords {
			if k != "" && strings.Contains(lower, strings.ToLower(k)) {
				best = r.Priority
				break
			}
		}
	}
	return best
}
