package dashboard

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk"
)

func TestPasswordHashIsArgon2idPHCAndVerifies(t *testing.T) {
	t.Parallel()
	h, err := HashPassword("correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q", h)
	}
	h2, _ := HashPassword("correct horse battery")
	if h == h2 {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	for _, tc := range []struct {
		pw   string
		want bool
	}{{"correct horse battery", true}, {"correct horse batterY", false}, {"", false}} {
		if ok, err := VerifyPassword(h, tc.pw); err != nil || ok != tc.want {
			t.Errorf("verify %q: %v, %v", tc.pw, ok, err)
		}
	}
	for _, bad := range []string{"", "plain", "$argon2i$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA", "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdA$aGFzaA"} {
		if _, err := VerifyPassword(bad, "x"); err == nil {
			t.Errorf("%q verified without error", bad)
		}
	}
}

// Every text a page or handler uses exists in English and in Chinese.
func TestEveryTextExistsInBothLanguages(t *testing.T) {
	t.Parallel()
	for k := range textEN {
		if textZH[k] == "" {
			t.Errorf("%s: no Chinese text", k)
		}
	}
	for k := range textZH {
		if textEN[k] == "" {
			t.Errorf("%s: no English text", k)
		}
	}
	used := map[string]bool{}
	keyRe := regexp.MustCompile(`(?:\.T|\.t\(|translate\(rq\.lang,|translate\(v\.Lang,)\s*"([a-z0-9._-]+)"`)
	for _, glob := range []string{"templates/*.html", "*.go"} {
		files, _ := filepath.Glob(glob)
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") || strings.HasPrefix(f, "i18n") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range keyRe.FindAllStringSubmatch(string(b), -1) {
				if !strings.HasSuffix(m[1], ".") { // a prefix completed at run time, listed below
					used[m[1]] = true
				}
			}
		}
	}
	// Keys built at run time.
	for _, s := range peakdesk.ActionStates {
		used["state."+string(s)] = true
	}
	for _, k := range []string{"state.redriven", "state.discarded", "role.viewer", "role.operator", "role.agent",
		"role.admin", "breaker.closed", "breaker.half-open", "breaker.open", "bulk.q.retry", "bulk.q.cancel",
		"bulk.b.retry", "bulk.b.cancel", "bulk.done.retry", "bulk.done.cancel", "dlq.q.redrive", "dlq.q.discard",
		"dlq.b.redrive", "dlq.b.discard", "dlq.done.redrive", "dlq.done.discard"} {
		used[k] = true
	}
	if len(used) < 100 {
		t.Fatalf("only %d keys found in use: the scan is broken", len(used))
	}
	for k := range used {
		if textEN[k] == "" {
			t.Errorf("%s is used but has no text", k)
		}
	}
}

func TestLanguageFromSwitchThenAcceptLanguage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ cookie, accept, want string }{
		{"", "zh-CN,zh;q=0.9,en;q=0.8", langZH},
		{"", "en-US,en;q=0.9,zh;q=0.5", langEN},
		{"", "zh-TW", langZH},
		{"", "fr-FR", langEN},
		{"", "", langEN},
		{"en", "zh-CN", langEN},
		{"zh", "en-US", langZH},
		{"xx", "zh-CN", langZH},
	} {
		r := httptest.NewRequest("GET", "/console/", nil)
		r.Header.Set("Accept-Language", tc.accept)
		if tc.cookie != "" {
			r.Header.Set("Cookie", langCookie+"="+tc.cookie)
		}
		if got := pickLang(r); got != tc.want {
			t.Errorf("cookie %q accept %q: %s, want %s", tc.cookie, tc.accept, got, tc.want)
		}
	}
}

func TestNextPageStaysInTheConsole(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"/console/outbox?state=dead": "/console/outbox?state=dead",
		"//evil.example/console/":    "/console/",
		"https://evil.example/":      "/console/",
		"/console/login":             "/console/",
		`/console/\evil`:             "/console/",
		"":                           "/console/",
	} {
		if got := nextPage(in); got != want {
			t.Errorf("nextPage(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNumbersReadWell(t *testing.T) {
	t.Parallel()
	for in, want := range map[any]string{12408: "12,408", int64(1000): "1,000", 999.6: "1,000", int64(-1234567): "-1,234,567"} {
		if got := num(in); got != want {
			t.Errorf("num(%v) = %q, want %q", in, got, want)
		}
	}
	if got := secs(0.25); got != "250 ms" {
		t.Errorf("secs(0.25) = %q", got)
	}
	if got := usd(int64(1234567)); got != "$1.2346" {
		t.Errorf("usd = %q", got)
	}
}
