package ingest

import (
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
)

func TestDecodePostRequest(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		body  string
		code  string // "" = accepted
		field string
	}{
		{"minimal", `{"text":"hi"}`, "", ""},
		{"trimmed", `{"text":"  双11满减怎么算？\n"}`, "", ""},
		{"full", `{"conversation_id":"0123456789abcdef0123456789abcdef","user_id":"u-1","text":"hi","channel":"app","priority":"p1","client_msg_id":"k1","metadata":{"a":1}}`, "", ""},
		{"null metadata", `{"text":"hi","metadata":null}`, "", ""},
		{"newline and tab kept", "{\"text\":\"a\\n\\tb\"}", "", ""},
		{"exactly 2000 runes", `{"text":"` + strings.Repeat("好", 2000) + `"}`, "", ""},
		{"2001 runes", `{"text":"` + strings.Repeat("好", 2001) + `"}`, peakdesk.EInvalid, "text"},
		{"carriage return", `{"text":"a\rb"}`, peakdesk.EInvalid, "text"},
		{"C1 control", `{"text":"a\u0085b"}`, peakdesk.EInvalid, "text"},
		{"NUL", `{"text":"a\u0000b"}`, peakdesk.EInvalid, "text"},
		{"uppercase conversation id", `{"text":"hi","conversation_id":"0123456789ABCDEF0123456789ABCDEF"}`, peakdesk.EInvalid, "conversation_id"},
		{"short conversation id", `{"text":"hi","conversation_id":"abc"}`, peakdesk.EInvalid, "conversation_id"},
		{"priority P0", `{"text":"hi","priority":"P0"}`, peakdesk.EInvalid, "priority"},
		{"client_msg_id with space", `{"text":"hi","client_msg_id":"a b"}`, peakdesk.EInvalid, "client_msg_id"},
		{"channel with slash", `{"text":"hi","channel":"a/b"}`, peakdesk.EInvalid, "channel"},
		{"metadata string", `{"text":"hi","metadata":"x"}`, peakdesk.EInvalid, "metadata"},
		{"metadata number", `{"text":"hi","metadata":1}`, peakdesk.EInvalid, "metadata"},
		{"text array", `{"text":["hi"]}`, peakdesk.EInvalid, "text"},
		{"trailing garbage", `{"text":"hi"} x`, peakdesk.EInvalid, ""},
		{"null", `null`, peakdesk.EInvalid, "text"},
		{"invalid utf8", "{\"text\":\"\xc3\x28\"}", peakdesk.EInvalid, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := decodePostRequest([]byte(tc.body))
			if got := peakdesk.ErrorCode(err); got != tc.code {
				t.Fatalf("code %q, want %q (err %v)", got, tc.code, err)
			}
			if err != nil {
				if e := err.(*peakdesk.Error); e.Field != tc.field {
					t.Errorf("field %q, want %q", e.Field, tc.field)
				}
				return
			}
			if req.Text != strings.TrimSpace(req.Text) {
				t.Errorf("text not trimmed: %q", req.Text)
			}
		})
	}
}

// FuzzDecodePostRequest checks that no input panics and that whatever is
// accepted satisfies every rule of docs/api.md. Seeds: testdata/fuzz.
func FuzzDecodePostRequest(f *testing.F) {
	f.Add([]byte(`{"text":"hi"}`))
	f.Add([]byte(`{"text":"我的订单 123456 到哪了？","priority":"p1","metadata":{"k":[1,2]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodePostRequest(body)
		if err != nil {
			if peakdesk.ErrorCode(err) == peakdesk.EInternal {
				t.Fatalf("internal error for bad input: %v", err)
			}
			return
		}
		n := utf8.RuneCountInString(req.Text)
		switch {
		case !utf8.Valid(body):
			t.Fatalf("accepted invalid UTF-8")
		case n == 0 || n > peakdesk.MaxTextRunes:
			t.Fatalf("accepted text of %d runes", n)
		case req.Text != strings.TrimSpace(req.Text):
			t.Fatalf("accepted untrimmed text %q", req.Text)
		case req.ConversationID != "" && !isHexID(req.ConversationID):
			t.Fatalf("accepted conversation id %q", req.ConversationID)
		case len(req.Metadata) > peakdesk.MaxMetadataBytes:
			t.Fatalf("accepted %d bytes of metadata", len(req.Metadata))
		case len(req.Metadata) > 0 && req.Metadata[0] != '{':
			t.Fatalf("accepted non-object metadata %s", req.Metadata)
		}
		if req.Priority != "" {
			if _, err := peakdesk.ParsePriority(req.Priority); err != nil {
				t.Fatalf("accepted priority %q", req.Priority)
			}
		}
		for _, r := range req.Text {
			if unicode.IsControl(r) && r != '\n' && r != '\t' {
				t.Fatalf("accepted control character %U", r)
			}
		}
	})
}

func TestClassify(t *testing.T) {
	t.Parallel()
	cases := map[string]peakdesk.Priority{
		"我要退款，订单 123456":                  peakdesk.P0,
		"I want a REFUND for my order":    peakdesk.P0,
		"支付失败了怎么办":                        peakdesk.P0,
		"我的快递到哪了？":                        peakdesk.P1,
		"Where is my parcel?":             peakdesk.P1,
		"双11满减怎么算？":                       peakdesk.P2,
		"What is the Double 11 discount?": peakdesk.P2,
		// Invisible format characters do not hide a keyword.
		"我的快\u200b递到哪了": peakdesk.P1,
		"re\u2060fund":  peakdesk.P0,
	}
	for text, want := range cases {
		if got := Classify(DefaultRules, text); got != want {
			t.Errorf("Classify(%q) = %s, want %s", text, got, want)
		}
	}
}

func TestIDSigner(t *testing.T) {
	t.Parallel()
	s := newIDSigner([]byte("secret"))
	id := s.New("msg", "shop", "alice", "")
	if !isHexID(id) || !s.Valid("msg", "shop", "alice", id) {
		t.Fatalf("fresh id %q not valid", id)
	}
	for _, bad := range [][3]string{{"conv", "shop", "alice"}, {"msg", "other", "alice"}, {"msg", "shop", "bob"}} {
		if s.Valid(bad[0], bad[1], bad[2], id) {
			t.Errorf("id valid for %v", bad)
		}
	}
	if other := newIDSigner([]byte("other")); other.Valid("msg", "shop", "alice", id) {
		t.Error("id valid under another secret")
	}
	if a, b := s.New("msg", "shop", "alice", "k1"), s.New("msg", "shop", "alice", "k1"); a != b {
		t.Errorf("keyed ids differ: %s %s", a, b)
	}
	if a, b := s.New("msg", "shop", "alice", "k1"), s.New("msg", "shop", "alice", "k2"); a == b {
		t.Error("different keys gave the same id")
	}
	if a, b := s.New("msg", "shop", "alice", ""), s.New("msg", "shop", "alice", ""); a == b {
		t.Error("two fresh ids are equal")
	}
}

func TestParseWait(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{"": 0, "5s": 5 * time.Second, "2.5": 2500 * time.Millisecond, "10s": 10 * time.Second} {
		if got, err := parseWait(in, 10*time.Second); err != nil || got != want {
			t.Errorf("parseWait(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"11s", "-1s", "soon"} {
		if _, err := parseWait(in, 10*time.Second); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
			t.Errorf("parseWait(%q) err %v, want invalid_argument", in, err)
		}
	}
}

// After a rotation of the platform key, ids signed with the previous one
// stay valid while it is listed; new ids use the current one.
func TestIDSignerSurvivesPlatformKeyRotation(t *testing.T) {
	t.Parallel()
	before := newIDSigner([]byte("old-platform-secret"))
	id := before.New("conv", "shop", "alice", "")
	rotated := newIDSigner([]byte("new-platform-secret"), []byte("old-platform-secret"))
	if !rotated.Valid("conv", "shop", "alice", id) {
		t.Fatal("an id of the previous key is invalid with the previous key listed")
	}
	if rotated.Valid("conv", "shop", "bob", id) {
		t.Error("the previous key's id is valid for another user")
	}
	if newIDSigner([]byte("new-platform-secret")).Valid("conv", "shop", "alice", id) {
		t.Error("an id of the previous key is valid once the previous key is dropped")
	}
	fresh := rotated.New("conv", "shop", "alice", "")
	if before.Valid("conv", "shop", "alice", fresh) || !newIDSigner([]byte("new-platform-secret")).Valid("conv", "shop", "alice", fresh) {
		t.Error("new ids are not signed with the current key")
	}
}
