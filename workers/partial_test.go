package workers

import (
	"strings"
	"testing"
)

// A partial reply holds back a trailing number however it is written, so
// that no digits the mask would hide once the number is complete go out.
func TestPartialHoldsBackATrailingNumber(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"请拨打 138 1234", "请拨打"},
		{"请拨打 138\u200b1234\u200b", "请拨打"},
		{"请拨打 １３８１２３４", "请拨打"},
		{"订单已发货。", "订单已发货。"},
	} {
		if got := strings.TrimRightFunc(tc.in, maybeNumber); got != tc.want {
			t.Errorf("held back from %q: shown %q, want %q", tc.in, got, tc.want)
		}
	}
}
