// Package widget is peakdesk's embeddable web chat: widget.js and
// widget.css, plain JavaScript and CSS with no framework, which the edge
// serves (GET /widget.js, GET /widget.css) and a shop adds to its pages with
// one script tag naming a URL of its own backend that hands out customer
// tokens. The widget talks to the chat API cross-origin (the shop lists its
// page origins: CORS), sends each message with an idempotency key, and
// follows replies on the customer's event stream with a stream token,
// resuming from the last event id after a drop. Demo serves the pretend
// shop page `peakdesk dev` shows a newcomer at /demo.
package widget

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"html/template"
	"net/http"
	"strings"
	"time"
)

//go:embed widget.js widget.css demo.html
var files embed.FS

// asset is one file served with its gzip form and a strong ETag.
type asset struct {
	body, gz    []byte
	etag, ctype string
}

func newAsset(name, ctype string) asset {
	body, err := files.ReadFile(name)
	if err != nil {
		panic(err) // embedded: cannot happen
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	_, _ = zw.Write(body)
	_ = zw.Close()
	sum := sha256.Sum256(body)
	return asset{body: body, gz: gz.Bytes(), etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: ctype}
}

var (
	script = newAsset("widget.js", "text/javascript; charset=utf-8")
	styles = newAsset("widget.css", "text/css; charset=utf-8")
)

// GzipSize is the size of widget.js and widget.css as served gzipped.
func GzipSize() int { return len(script.gz) + len(styles.gz) }

func (a asset) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("ETag", a.etag)
	// Short: a shop's pages pick up a new version within minutes.
	h.Set("Cache-Control", "public, max-age=300")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Vary", "Accept-Encoding")
	if r.Header.Get("If-None-Match") == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.body
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		h.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// Register mounts GET /widget.js and GET /widget.css.
func Register(mux *http.ServeMux) {
	mux.Handle("GET /widget.js", script)
	mux.Handle("GET /widget.css", styles)
}

// DemoConfig configures the dev demo page.
type DemoConfig struct {
	// Shop and User are the demo customer the page is signed in as.
	Shop, User string
	// Order is an order of the simulated shop that User owns.
	Order string
	// Token mints a customer token for the demo customer (the role a shop's
	// backend plays). It may be called more than once.
	Token func(shop, user string, ttl time.Duration) (string, error)
}

var demoPage = template.Must(template.ParseFS(files, "demo.html"))

// Demo returns the handler of GET /demo (the pretend shop page with the
// widget) and GET /demo/token (its backend: a token for the demo customer,
// for the page's own origin only). Mount it in dev mode only: anyone who
// can load the page chats as the demo customer.
func Demo(cfg DemoConfig) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /demo", func(w http.ResponseWriter, r *http.Request) {
		lang := "zh"
		if q := r.URL.Query().Get("lang"); q == "en" {
			lang = "en"
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_ = demoPage.Execute(w, map[string]string{
			"SignedIn": "signed in as " + cfg.User + " · 已登录", "User": cfg.User, "Order": cfg.Order,
			"Widget": "/widget.js", "Lang": lang,
		})
	})
	mux.HandleFunc("GET /demo/token", func(w http.ResponseWriter, r *http.Request) {
		// A shop's backend would check its own session here.
		tok, err := cfg.Token(cfg.Shop, cfg.User, time.Hour)
		if err != nil {
			http.Error(w, "cannot mint a token", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte(`{"token":"` + tok + `"}`))
	})
	return mux
}
