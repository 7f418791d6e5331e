package dashboard

import (
	"bytes"
	"encoding/json"
	"html/template"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// namedValue is one row of a small table.
type namedValue struct {
	Name  string
	Value float64
}

// funcs format numbers, money and times the same way on every page.
var funcs = template.FuncMap{
	"num":   num,
	"rate":  rate,
	"secs":  secs,
	"usd":   usd,
	"cents": cents,
	"when":  when,
	"whenms": func(t time.Time) string {
		return t.In(storage.ShopDay).Format("2006-01-02 15:04:05.000")
	},
	"clock": func(t time.Time) string { return t.In(storage.ShopDay).Format("15:04:05") },
	"dur": func(from, to time.Time) string {
		return to.Sub(from).Round(time.Millisecond).String()
	},
	"pretty": pretty,
	"tool":   tool,
}

// num writes a count with thousands separators: 12,408.
func num(v any) string {
	var n int64
	switch x := v.(type) {
	case int:
		n = int64(x)
	case int64:
		n = x
	case float64:
		if math.IsNaN(x) {
			return "—"
		}
		n = int64(math.Round(x))
	default:
		return "?"
	}
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// rate writes a per-second rate.
func rate(x float64) string {
	switch {
	case math.IsNaN(x):
		return "—"
	case x == 0:
		return "0"
	case x < 10:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return num(x)
}

// secs writes a duration given in seconds; 0 and NaN are "—".
func secs(x float64) string {
	switch {
	case math.IsNaN(x) || x <= 0:
		return "—"
	case x < 1:
		return strconv.Itoa(int(math.Round(x*1000))) + " ms"
	case x < 120:
		return strconv.FormatFloat(x, 'f', 1, 64) + " s"
	}
	return (time.Duration(x) * time.Second).Round(time.Second).String()
}

// usd writes micro-USD as dollars.
func usd(v any) string {
	var micro float64
	switch x := v.(type) {
	case int64:
		micro = float64(x)
	case float64:
		micro = x
	}
	return "$" + strconv.FormatFloat(micro/1e6, 'f', 4, 64)
}

func cents(c int64) string { return strconv.FormatFloat(float64(c)/100, 'f', 2, 64) }

// when writes a time in the shops' day zone (UTC+8).
func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.In(storage.ShopDay).Format("2006-01-02 15:04:05")
}

// pretty indents JSON for reading.
func pretty(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return string(raw)
	}
	return b.String()
}

// tool names the LLM tool that promised an action of kind.
func tool(kind peakdesk.ActionKind) string {
	switch kind {
	case peakdesk.ActionCouponIssue:
		return "issue_coupon"
	case peakdesk.ActionRefundRequest:
		return "request_refund"
	case peakdesk.ActionOrderFollowUp:
		return "lookup_order"
	}
	return string(kind)
}
