package outbox

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// What a shop answers ends up in attempt rows operators read: it is capped,
// cut at a rune boundary, and made storable (valid UTF-8, no NUL).
func TestExcerptsAreCapped(t *testing.T) {
	t.Parallel()
	zh := strings.Repeat("退款失败", 100) // 3 bytes a rune: 1,200 bytes
	tests := []struct {
		name    string
		in      string
		want    string // exact, when set
		prefix  string // else the excerpt starts with this
		cutMark bool
	}{
		{"short", `{"error":"x"}`, `{"error":"x"}`, "", false},
		{"exactly the cap", strings.Repeat("a", maxExcerpt), strings.Repeat("a", maxExcerpt), "", false},
		{"ascii over the cap", strings.Repeat("a", 64<<10), "", strings.Repeat("a", maxExcerpt-len("…")), true},
		{"chinese over the cap", zh, "", "退款失败", true},
		{"invalid utf-8", "ok \xff\xfe done", "ok \uFFFD done", "", false},
		{"nul bytes", "a\x00b", "ab", "", false},
		{"invalid bytes over the cap", strings.Repeat("\xff!", 4<<10), "", "\uFFFD!", true},
	}
	for _, tc := range tests {
		got := excerpt([]byte(tc.in))
		switch {
		case len(got) > maxExcerpt:
			t.Errorf("%s: %d bytes, want at most %d", tc.name, len(got), maxExcerpt)
		case !utf8.ValidString(got) || strings.ContainsRune(got, 0):
			t.Errorf("%s: %q is not storable text", tc.name, got)
		case tc.want != "" && got != tc.want:
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		case !strings.HasPrefix(got, tc.prefix):
			t.Errorf("%s: %q, want it to start with %q", tc.name, got, tc.prefix)
		case strings.HasSuffix(got, "…") != tc.cutMark:
			t.Errorf("%s: %q: cut mark %v, want %v", tc.name, got, !tc.cutMark, tc.cutMark)
		}
		if tc.cutMark && len(got) < maxExcerpt-utf8.UTFMax {
			t.Errorf("%s: cut to %d bytes, more than a rune short of %d", tc.name, len(got), maxExcerpt)
		}
	}
	if got := capText(strings.Repeat("错", 1000), 100); len(got) > 100 || !utf8.ValidString(got) {
		t.Errorf("capText: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
}
