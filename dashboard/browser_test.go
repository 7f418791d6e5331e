package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// The browser tests drive Debian's chromium, headless, through chromedp.
// They are skipped only where chromium is missing and CI is unset: in CI a
// missing chromium fails them (deploy/local/services.sh installs it).

func chromiumPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed, and CI must run the browser tests (bash deploy/local/services.sh installs it)")
	}
	t.Skip("chromium is not installed (bash deploy/local/services.sh installs it)")
	return ""
}

// newBrowser starts one headless chromium for a test. Its tabs share the
// cookie jar: loginTab clears it, so the latest login is the one that
// counts.
func newBrowser(t testing.TB, width, height int) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
		chromedp.Flag("lang", "en-US"),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

func tab(t testing.TB, browser context.Context) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	// The first Run opens the tab and ties it to its context: this one,
	// not run's short-lived ones.
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	return ctx
}

// run runs actions in the tab ctx, within 45 s.
func run(t testing.TB, ctx context.Context, what string, actions ...chromedp.Action) {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Run(rctx, actions...); err != nil {
		var loc, body string
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = chromedp.Run(lctx, chromedp.Location(&loc), chromedp.Text("body", &body, chromedp.ByQuery))
		t.Fatalf("%s: %v (at %s)\n%s", what, err, loc, body)
	}
}

// loginTab logs a new tab in as email.
func (b *testBundle) loginTab(t testing.TB, browser context.Context, email string) context.Context {
	t.Helper()
	ctx := tab(t, browser)
	run(t, ctx, "log in",
		network.ClearBrowserCookies(),
		chromedp.Navigate(b.url+"/console/login"),
		chromedp.SendKeys("#email", email, chromedp.ByQuery),
		chromedp.SendKeys("#password", testPassword, chromedp.ByQuery),
		chromedp.Click("#login", chromedp.ByQuery),
		chromedp.WaitVisible("#live", chromedp.ByQuery),
	)
	return ctx
}

// textOf reads the text of the first element matching sel.
func textOf(t testing.TB, ctx context.Context, sel string) string {
	t.Helper()
	var s string
	run(t, ctx, "read "+sel, chromedp.Text(sel, &s, chromedp.ByQuery))
	return s
}

// waitText polls until the element sel's text contains want.
func waitText(t testing.TB, ctx context.Context, sel, want string) {
	t.Helper()
	var s string
	deadline := time.Now().Add(40 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := chromedp.Run(rctx, chromedp.Text(sel, &s, chromedp.ByQuery))
		cancel()
		if err == nil && strings.Contains(s, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never showed %q; last %q (%v)", sel, want, s, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startRelay runs an outbox relay against the simulated shop, with a short
// retry step so dead actions come about quickly.
func (b *testBundle) startRelay(t testing.TB, sim *shopsim.Sim) {
	t.Helper()
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	shop, err := shopapi.New(shopapi.Config{DB: b.db, DefaultBaseURL: srv.URL, Timeout: 5 * time.Second,
		AllowPrivate: true}) // the simulated shop is on loopback
	if err != nil {
		t.Fatal(err)
	}
	r, err := outbox.NewRelay(outbox.Config{DB: b.db, Shop: shop, Logger: storagetest.Logger(t),
		PollInterval: 50 * time.Millisecond, Step: 30 * time.Millisecond, Jitter: 0.1, Concurrency: 64,
		Lease: 10 * time.Second, AttemptTimeout: 4 * time.Second,
		OnFollowUp: func(context.Context, peakdesk.Action, outbox.FollowUpResult) error { return nil },
		OnHandoff:  func(context.Context, peakdesk.Action, string, string) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
}

// The console in a real browser: an operator finds a dead refund by a word
// of its error, sees every attempt and retries it once the shop is back;
// bulk-retries 1,000 dead coupons after a confirmation that says 1,000; a
// viewer cannot retry; a shop's operator never sees another shop; a forged
// cross-site form is refused; and the overview updates by itself.
func TestBrowser(t *testing.T) {
	b := setup(t, bundleOptions{sampleInterval: 300 * time.Millisecond})
	browser := newBrowser(t, 1440, 900)
	sim := shopsim.New(shopsim.Faults{Down: true}, []byte("whsec"))
	b.startRelay(t, sim)
	ctx := context.Background()

	// A refund the shop never took: three attempts, all 503, then dead.
	payload, _ := json.Marshal(outbox.RefundPayload{OrderID: "7654321", UserID: "u1", AmountCents: 1999, Reason: "broken kettle"})
	if _, err := b.db.EnqueueActions(ctx, []peakdesk.Action{{ShopID: "demo", ConversationID: strings.Repeat("a", 32),
		Kind: peakdesk.ActionRefundRequest, Payload: payload, IdempotencyKey: "browser-refund-1", MaxAttempts: 3}}); err != nil {
		t.Fatal(err)
	}
	var refund peakdesk.Action
	storagetest.WaitFor(t, "the refund to die", 30*time.Second, func() bool {
		page, err := b.db.ListActions(ctx, "demo", storage.ActionFilter{Q: "browser-refund-1"}, 0, 1)
		if err != nil || len(page) == 0 {
			return false
		}
		refund = page[0]
		return refund.State == peakdesk.ActionDead
	})
	sim.SetFaults(shopsim.Faults{}) // the shop is back

	operator := b.operator(t, storage.RoleOperator, "")
	opTab := b.loginTab(t, browser, operator)

	t.Run("find a dead refund by its error, see every attempt, retry it", func(t *testing.T) {
		run(t, opTab, "search",
			// Start from a page without the row, so that the row can only
			// appear on the search's page.
			chromedp.Navigate(b.url+"/console/outbox?state=canceled"),
			chromedp.SetValue("#f-state", "dead", chromedp.ByQuery),
			chromedp.SetValue("#f-kind", "refund.request", chromedp.ByQuery),
			chromedp.SendKeys("#f-q", "simulated", chromedp.ByQuery),
			chromedp.Click("#f-apply", chromedp.ByQuery),
			chromedp.WaitVisible(`#f-q[value="simulated"]`, chromedp.ByQuery),
			chromedp.WaitVisible(fmt.Sprintf(`tr[data-action="%d"]`, refund.ID), chromedp.ByQuery),
			chromedp.Click(fmt.Sprintf(`tr[data-action="%d"] a.action-link`, refund.ID), chromedp.ByQuery),
			chromedp.WaitVisible("#attempts", chromedp.ByQuery),
		)
		var attempts int
		run(t, opTab, "count attempts", chromedp.Evaluate(`document.querySelectorAll("#attempts tr.attempt").length`, &attempts))
		if attempts != 3 {
			t.Fatalf("%d attempt rows, want 3", attempts)
		}
		if s := textOf(t, opTab, "#attempts"); strings.Count(s, "shop answered 503 unavailable") != 3 {
			t.Fatalf("attempts: %s", s)
		}
		if s := textOf(t, opTab, "#action-state"); s != "dead" {
			t.Fatalf("state %q", s)
		}
		run(t, opTab, "retry", chromedp.Click("#retry", chromedp.ByQuery), chromedp.WaitVisible("#flash", chromedp.ByQuery))
		waitText(t, opTab, "#action-state", "succeeded")
		if a := b.action(t, refund.ID); a.State != peakdesk.ActionSucceeded {
			t.Fatalf("refund is %s", a.State)
		}
		if n := len(sim.Effects()); n != 1 {
			t.Fatalf("%d effects at the shop, want 1", n)
		}
	})

	t.Run("bulk-retry 1,000 dead actions found by a filter", func(t *testing.T) {
		ids := b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 1000, peakdesk.ActionDead, "coupon gateway exploded")
		run(t, opTab, "filter",
			chromedp.Navigate(b.url+"/console/outbox?state=dead&kind=coupon.issue&q=exploded"),
			chromedp.Click("#bulk-retry", chromedp.ByQuery),
			chromedp.WaitVisible("#bulk-question", chromedp.ByQuery),
		)
		if q := textOf(t, opTab, "#bulk-question"); q != "Retry 1,000 dead coupon.issue actions?" {
			t.Fatalf("confirmation: %q", q)
		}
		run(t, opTab, "confirm", chromedp.Click("#bulk-confirm", chromedp.ByQuery), chromedp.WaitVisible("#bulk-result", chromedp.ByQuery))
		if r := textOf(t, opTab, "#bulk-result"); r != "1,000 actions retried." {
			t.Fatalf("result: %q", r)
		}
		// Every one of them succeeds at the shop; the panel, which follows
		// the actions the operation changed, shows them all succeeded.
		storagetest.WaitFor(t, "1,000 coupons to succeed", 60*time.Second, func() bool {
			var n int
			err := b.conn.QueryRow(ctx, `SELECT count(*) FROM outbox_actions WHERE id = ANY($1) AND state = 'succeeded'`,
				ids).Scan(&n)
			return err == nil && n == len(ids)
		})
		waitText(t, opTab, "#progress", "Nothing is waiting or running any more.")
		if s := textOf(t, opTab, "#progress-dead"); s != "0" {
			t.Fatalf("dead again: %s", s)
		}
		if s := textOf(t, opTab, "#progress-succeeded"); s != "1,000" {
			t.Fatalf("succeeded: %s", s)
		}
		if n := len(sim.Effects()); n != 1001 {
			t.Fatalf("%d effects at the shop, want 1,001", n)
		}
	})

	deadID := b.seedActions(t, "demo", peakdesk.ActionRefundRequest, 1, peakdesk.ActionDead, "refund desk closed")[0]
	deadPath := b.url + "/console/outbox/" + strconv.FormatInt(deadID, 10)

	t.Run("a viewer cannot retry", func(t *testing.T) {
		viewer := b.loginTab(t, browser, b.operator(t, storage.RoleViewer, ""))
		var buttons, status int
		run(t, viewer, "open",
			chromedp.Navigate(deadPath),
			chromedp.WaitVisible("#attempts", chromedp.ByQuery),
			chromedp.Evaluate(`document.querySelectorAll("#retry, #cancel, form[action$='/retry']").length`, &buttons),
			chromedp.Evaluate(`fetch(location.pathname + "/retry", {method: "POST"}).then(r => r.status)`, &status,
				func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }),
		)
		if buttons != 0 || status != http.StatusForbidden {
			t.Fatalf("viewer: %d buttons, POST answered %d", buttons, status)
		}
		if a := b.action(t, deadID); a.State != peakdesk.ActionDead {
			t.Fatalf("after a viewer's POST: %s", a.State)
		}
	})

	t.Run("a shop's operator never sees another shop's rows", func(t *testing.T) {
		theirs := b.seedActions(t, "other", peakdesk.ActionCouponIssue, 5, peakdesk.ActionDead, "coupon gateway exploded")
		shopTab := b.loginTab(t, browser, b.operator(t, storage.RoleOperator, "demo"))
		var shops []string
		run(t, shopTab, "list",
			chromedp.Navigate(b.url+"/console/outbox?state=dead"),
			chromedp.WaitVisible("#actions", chromedp.ByQuery),
			chromedp.Evaluate(`[...document.querySelectorAll("#actions tr[data-action] td:nth-child(3)")].map(td => td.textContent)`, &shops),
		)
		if len(shops) == 0 {
			t.Fatal("no rows")
		}
		for _, s := range shops {
			if s != "demo" {
				t.Fatalf("row of shop %q", s)
			}
		}
		run(t, shopTab, "other shop's action", chromedp.Navigate(b.url+"/console/outbox/"+strconv.FormatInt(theirs[0], 10)),
			chromedp.WaitVisible("#error-message", chromedp.ByQuery))
		if s := textOf(t, shopTab, "h1"); !strings.HasPrefix(s, "404") {
			t.Fatalf("other shop's action: %q", s)
		}
	})

	t.Run("a forged cross-site POST is refused", func(t *testing.T) {
		opTab := b.loginTab(t, browser, operator)
		evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/retry"></form>
				<p>You won a prize!</p>
				<script>addEventListener("load", () => setTimeout(() => document.getElementById("f").submit(), 200))</script>`, deadPath)
		}))
		defer evil.Close()
		run(t, opTab, "visit the forger", chromedp.Navigate(evil.URL), chromedp.WaitVisible("#error-message", chromedp.ByQuery))
		if s := textOf(t, opTab, "#error-message"); !strings.Contains(s, "cross-site request forgery") {
			t.Fatalf("refusal: %q", s)
		}
		if a := b.action(t, deadID); a.State != peakdesk.ActionDead {
			t.Fatalf("the forged POST acted: %s", a.State)
		}
	})

	t.Run("the overview updates by itself when messages flow", func(t *testing.T) {
		opTab := b.loginTab(t, browser, operator)
		if s := textOf(t, opTab, "#backlog-total"); s != "0" {
			t.Fatalf("backlog before: %q", s)
		}
		for i := range 25 {
			msg, _ := json.Marshal(peakdesk.Message{ID: fmt.Sprintf("%032x", i+1), ShopID: "demo", Text: "where is my parcel",
				Priority: peakdesk.P1, ConversationID: strings.Repeat("b", 32), UserID: "u1", AcceptedAt: time.Now()})
			if _, err := b.js.Publish(ctx, queue.InSubject(peakdesk.P1, "demo"), msg); err != nil {
				t.Fatal(err)
			}
		}
		waitText(t, opTab, "#backlog-total", "25")
	})
}
