package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

var updateWidgetShot = flag.Bool("update-screenshots", false, "write the demo page's screenshot to docs/")

// The browser tests drive Debian's chromium, headless (the same set-up as
// dashboard/browser_test.go): skipped only where chromium is missing and CI
// is unset.
func chromium(t *testing.T, width, height int) context.Context {
	t.Helper()
	path := ""
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if p, err := exec.LookPath("chromium"); err == nil {
			path = p
		} else if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed, and CI must run the browser tests (bash deploy/local/services.sh installs it)")
		} else {
			t.Skip("chromium is not installed (bash deploy/local/services.sh installs it)")
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(width, height), chromedp.Flag("lang", "zh-CN"))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// browse runs actions in the tab within 45 s, failing with the page's text.
func browse(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action) {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Run(rctx, actions...); err != nil {
		var body string
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = chromedp.Run(lctx, chromedp.Evaluate(`document.body.innerText + "\n" + (document.querySelector('.pdw') || {}).outerHTML`, &body))
		t.Fatalf("%s: %v\n%s", what, err, body)
	}
}

// waitJS polls a JavaScript condition in the tab until it is true.
func waitJS(t *testing.T, ctx context.Context, what, cond string) {
	t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	for {
		var ok bool
		browse(t, ctx, what, chromedp.Evaluate("!!("+cond+")", &ok))
		if ok {
			return
		}
		if time.Now().After(deadline) {
			browse(t, ctx, what, chromedp.ActionFunc(func(context.Context) error {
				return fmt.Errorf("still not true after 40 s: %s", cond)
			}))
		}
		time.Sleep(100 * time.Millisecond) // a poll's pause, not a wait for the condition
	}
}

func jsInt(t *testing.T, ctx context.Context, expr string) int {
	t.Helper()
	var n int
	browse(t, ctx, expr, chromedp.Evaluate(expr, &n))
	return n
}

// A newcomer opens /demo in a real browser and chats: the answer streams
// in (partial text first); with the network down for a moment a reply
// produced meanwhile arrives once after the reconnect; a refund asked as
// the order's owner makes one refund action; and the chat also works from
// a shop's own page on an allowed origin, while a page of any other origin
// cannot call the API.
func TestWidgetChatsInARealBrowser(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 30 * time.Millisecond, ChunkDelay: 40 * time.Millisecond})

	// Two shop pages on origins of their own: one the demo shop allows.
	page := func(tokenUser string) *httptest.Server {
		mux := http.NewServeMux()
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
			tok, _ := token.Sign([]byte(testSecret), "demo", tokenUser, nil, time.Hour)
			fmt.Fprintf(w, `{"token":%q}`, tok)
		})
		return srv
	}
	allowed, foreign := page("shopper-allowed"), page("shopper-foreign")
	db, err := storage.Open(context.Background(), b.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.SetShopAllowedOrigins(context.Background(), "demo", []string{allowed.URL}); err != nil {
		t.Fatal(err)
	}

	p := b.start(t, []string{roleIngest, roleWorker, roleRelay}, func(c *Config) { c.Dev = true })
	base := "http://" + p.Addr()
	for _, srv := range []*httptest.Server{allowed, foreign} {
		srv.Config.Handler.(*http.ServeMux).HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `<!doctype html><html><head><meta charset="utf-8"><title>shop</title></head><body><h1>A shop</h1>
<script src="%s/widget.js" data-token-url="/token" data-lang="en" data-open="true"></script></body></html>`, base)
		})
	}

	browser := chromium(t, 1280, 860)
	tab, cancel := chromedp.NewContext(browser)
	defer cancel()
	// The first Run opens the tab and ties it to its context: this one,
	// not browse's short-lived ones.
	if err := chromedp.Run(tab); err != nil {
		t.Fatal(err)
	}
	chromedp.ListenTarget(tab, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			for _, a := range ev.Args {
				t.Logf("console.%s: %s", ev.Type, a.Value)
			}
		case *runtime.EventExceptionThrown:
			t.Logf("page exception: %s", ev.ExceptionDetails.Error())
		case *network.EventLoadingFailed:
			t.Logf("request failed: %s %s", ev.ErrorText, ev.BlockedReason)
		}
	})

	// 1. The demo page: ask, and see the answer stream in.
	browse(t, tab, "open /demo",
		network.Enable(),
		chromedp.Navigate(base+"/demo"),
		chromedp.WaitVisible(".pdw-panel", chromedp.ByQuery),
		chromedp.Evaluate(`window.__sawPartial = false;
			new MutationObserver(() => { if (document.querySelector('.pdw-partial')) window.__sawPartial = true; })
				.observe(document.querySelector('.pdw-log'), {childList: true, subtree: true}); true`, nil),
		// An order question is p1: its answer streams (p2 answers arrive whole).
		chromedp.SendKeys(".pdw-input", "我的订单 "+demoOrder+" 到哪了？", chromedp.ByQuery),
		chromedp.Click(".pdw-send", chromedp.ByQuery),
	)
	waitJS(t, tab, "the first answer", `document.querySelectorAll('.pdw-log [data-reply-id]').length >= 1`)
	waitJS(t, tab, "the question marked answered", `!!document.querySelector('.pdw-mine[data-status="answered"]')`)
	if jsInt(t, tab, `window.__sawPartial ? 1 : 0`) != 1 {
		t.Error("the answer did not stream in: no partial text was shown before the reply")
	}

	// 2. The network drops; a reply is made meanwhile (an agent's side
	// channel: the customer's own token, from outside the browser); it
	// arrives once when the network is back.
	browse(t, tab, "go offline",
		network.OverrideNetworkState(true, 0, -1, -1),
		chromedp.ActionFunc(func(ctx context.Context) error {
			_, err := network.EmulateNetworkConditionsByRule([]*network.Conditions{{Offline: true, DownloadThroughput: -1, UploadThroughput: -1}}).Do(ctx)
			return err
		}),
	)
	waitJS(t, tab, "the widget to notice the drop", `!document.querySelector('.pdw-banner').hidden`)
	var conv string
	browse(t, tab, "conversation id", chromedp.Evaluate(`JSON.parse(localStorage.getItem('peakdesk:`+base+`')).conv`, &conv))
	u6 := bearer(t, "demo", demoCustomer)
	r := call(t, "POST", base+"/v1/messages?wait=10s", u6,
		jsonBody(t, map[string]string{"conversation_id": conv, "text": "How long does shipping take?"}))
	if r.status != http.StatusOK {
		t.Fatalf("a question while the browser is offline: %d %s", r.status, r.raw)
	}
	missed := r.body["reply"].(map[string]any)["reply_id"].(string)
	browse(t, tab, "go online",
		chromedp.ActionFunc(func(ctx context.Context) error {
			_, err := network.EmulateNetworkConditionsByRule([]*network.Conditions{{DownloadThroughput: -1, UploadThroughput: -1}}).Do(ctx)
			return err
		}),
		network.OverrideNetworkState(false, 0, -1, -1),
	)
	waitJS(t, tab, "the missed reply after the reconnect", `document.querySelectorAll('[data-reply-id="`+missed+`"]').length >= 1`)

	// 3. A refund as the order's owner: one refund action.
	browse(t, tab, "ask for a refund",
		chromedp.SendKeys(".pdw-input", "我要退款，订单号 "+demoOrder+"，东西坏了", chromedp.ByQuery),
		chromedp.Click(".pdw-send", chromedp.ByQuery),
	)
	waitJS(t, tab, "the refund answer", `document.querySelectorAll('.pdw-log [data-reply-id]').length >= 3`)
	// Everything shown once: the replay after the reconnect repeated nothing.
	if n := jsInt(t, tab, `document.querySelectorAll('[data-reply-id="`+missed+`"]').length`); n != 1 {
		t.Errorf("the reply made while offline is shown %d times, want once", n)
	}
	if n := jsInt(t, tab, `new Set([...document.querySelectorAll('[data-reply-id]')].map(e => e.dataset.replyId)).size - document.querySelectorAll('[data-reply-id]').length`); n != 0 {
		t.Errorf("%d replies shown twice", -n)
	}
	if *updateWidgetShot {
		var png []byte
		browse(t, tab, "screenshot", cdppage.BringToFront(), chromedp.EmulateViewport(1280, 860),
			chromedp.Sleep(500*time.Millisecond), chromedp.CaptureScreenshot(&png))
		if err := os.WriteFile("../../docs/widget-demo.png", png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	count := func(query string, args ...any) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, query, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	storagetest.WaitFor(t, "the refund action carried out", 30*time.Second, func() bool {
		return count(`SELECT count(*) FROM outbox_actions WHERE kind = 'refund.request' AND state = 'succeeded'`) >= 1
	})
	if n := count(`SELECT count(*) FROM outbox_actions WHERE kind = 'refund.request'`); n != 1 {
		t.Fatalf("refund actions: %d, want 1", n)
	}
	refunds := 0
	for _, e := range b.shop.Effects() {
		if e.Kind == "refund" {
			refunds++
		}
	}
	if refunds != 1 {
		t.Fatalf("the shop applied %d refunds, want 1", refunds)
	}

	// 4. A shop page on an allowed origin chats cross-origin.
	browse(t, tab, "open the allowed shop page",
		chromedp.Navigate(allowed.URL),
		chromedp.WaitVisible(".pdw-panel", chromedp.ByQuery),
		chromedp.SendKeys(".pdw-input", "Can I change my address?", chromedp.ByQuery),
		chromedp.Click(".pdw-send", chromedp.ByQuery),
	)
	waitJS(t, tab, "an answer on the allowed origin", `document.querySelectorAll('.pdw-log [data-reply-id]').length >= 1`)

	// 5. A page of another origin cannot call the API: the browser's
	// preflight is refused, so the request is never sent.
	browse(t, tab, "open the foreign page", chromedp.Navigate(foreign.URL), chromedp.WaitVisible(".pdw-panel", chromedp.ByQuery))
	var outcome string
	browse(t, tab, "call the API from a foreign origin", chromedp.Evaluate(`
		fetch('/token').then(r => r.json()).then(j => fetch('`+base+`/v1/messages', {method: 'POST',
			headers: {'Authorization': 'Bearer ' + j.token, 'Content-Type': 'application/json'},
			body: JSON.stringify({text: 'hello from a foreign page'})}))
		.then(r => 'status ' + r.status, e => 'blocked')`, &outcome, func(p *runtime.EvaluateParams) *runtime.EvaluateParams {
		return p.WithAwaitPromise(true)
	}))
	if outcome != "blocked" {
		t.Fatalf("a foreign origin's POST: %s, want blocked by the browser", outcome)
	}
	if n := count(`SELECT count(*) FROM conversations WHERE user_id = 'shopper-foreign'`); n != 0 {
		t.Fatalf("a foreign origin's page started %d conversations", n)
	}

	// 6. On a phone-sized screen, in English, with the keyboard only: the
	// panel fills the screen; Escape closes it and gives the focus back to
	// the launcher; Enter opens it with the focus in the input; Enter sends.
	browse(t, tab, "open /demo on a phone",
		chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
		chromedp.Navigate(base+"/demo?lang=en"),
		chromedp.WaitVisible(".pdw-panel", chromedp.ByQuery),
	)
	if w := jsInt(t, tab, `Math.round(document.querySelector('.pdw-panel').getBoundingClientRect().width) - window.innerWidth`); w != 0 {
		t.Errorf("on a phone the panel is %d px narrower than the screen", -w)
	}
	var title string
	browse(t, tab, "title", chromedp.Text(".pdw-title", &title, chromedp.ByQuery))
	if title != "Customer service" {
		t.Errorf("the English widget's title is %q", title)
	}
	browse(t, tab, "Escape closes", chromedp.Focus(".pdw-input", chromedp.ByQuery), chromedp.KeyEvent(kb.Escape))
	waitJS(t, tab, "the panel closed, the launcher focused",
		`document.querySelector('.pdw-panel').hidden && document.activeElement === document.querySelector('.pdw-launcher')`)
	browse(t, tab, "Enter opens", chromedp.KeyEvent(kb.Enter))
	waitJS(t, tab, "the panel open, the input focused",
		`!document.querySelector('.pdw-panel').hidden && document.activeElement === document.querySelector('.pdw-input')`)
	before := jsInt(t, tab, `document.querySelectorAll('[data-reply-id]').length`)
	browse(t, tab, "type and send with Enter", chromedp.KeyEvent("What coupons do you have?"), chromedp.KeyEvent(kb.Enter))
	waitJS(t, tab, "the answer on the phone", fmt.Sprintf(`document.querySelectorAll('[data-reply-id]').length > %d`, before))
	if *updateWidgetShot {
		var png []byte
		browse(t, tab, "phone screenshot", cdppage.BringToFront(), chromedp.Sleep(500*time.Millisecond), chromedp.CaptureScreenshot(&png))
		if err := os.WriteFile("../../docs/widget-phone.png", png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
