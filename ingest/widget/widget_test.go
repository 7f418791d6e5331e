package widget

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The widget stays small: at most 15 KB gzipped, script and styles together.
func TestWidgetIsSmall(t *testing.T) {
	if n := GzipSize(); n > 15<<10 {
		t.Fatalf("widget.js + widget.css are %d bytes gzipped, more than 15 KB", n)
	}
}

func TestWidgetServedGzippedWithETag(t *testing.T) {
	mux := http.NewServeMux()
	Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tr := &http.Transport{DisableCompression: true}
	req, _ := http.NewRequest("GET", srv.URL+"/widget.js", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Fatalf("GET /widget.js: %d %v", resp.StatusCode, resp.Header)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("the widget's files need no CORS headers and get none")
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(zr)
	if !strings.Contains(string(body), "/v1/stream-tokens") {
		t.Fatal("the gzipped body is not the widget")
	}
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	again, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	again.Body.Close()
	if again.StatusCode != http.StatusNotModified {
		t.Fatalf("a repeat with its ETag: %d, want 304", again.StatusCode)
	}
}

// The demo page embeds the widget with its token URL, and the token URL
// mints the demo customer's token.
func TestDemoPage(t *testing.T) {
	var minted []string
	h := Demo(DemoConfig{Shop: "demo", User: "u6", Order: "1234567890123456",
		Token: func(shop, user string, ttl time.Duration) (string, error) {
			minted = append(minted, shop+"/"+user)
			return "tok", nil
		}})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/demo", nil))
	if page := rec.Body.String(); rec.Code != 200 || !strings.Contains(page, `src="/widget.js" data-token-url="/demo/token"`) ||
		!strings.Contains(page, "1234567890123456") {
		t.Fatalf("GET /demo: %d\n%s", rec.Code, page)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/demo/token", nil))
	if rec.Code != 200 || rec.Body.String() != `{"token":"tok"}` || len(minted) != 1 || minted[0] != "demo/u6" {
		t.Fatalf("GET /demo/token: %d %s (minted %v)", rec.Code, rec.Body, minted)
	}
}
