package dashboard_test

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/secrets"
)

// Shop administration in a real browser: an admin creates a shop and sees
// its webhook secret once, sets its request limits and webhook, uploads an
// FAQ file and tries a question, which the FAQ would answer on its own.
// Everything lands in Postgres (secrets sealed) and in the audit log; an
// operator who is not an admin gets no shop page.
func TestBrowserShopAdministration(t *testing.T) {
	b := setup(t, bundleOptions{})
	box, err := secrets.New(bytes.Repeat([]byte{6}, secrets.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	b.db.UseSecrets(box)
	ctx := context.Background()
	faqFile := filepath.Join(t.TempDir(), "teahouse-faq.csv")
	if err := os.WriteFile(faqFile, []byte("question,answer,tags\n"+
		"双11满减怎么算？,每满300减50，可以跨店累计。,满减|活动\n"+
		"可以开发票吗？,可以，在订单详情页申请电子发票。,发票\n"+
		"How long does delivery take?,Orders ship within 48 hours.,shipping\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	browser := newBrowser(t, 1440, 1000)
	tab := b.loginTab(t, browser, b.operator(t, storage.RoleAdmin, ""))

	var once string
	run(t, tab, "create a shop",
		chromedp.Click("#nav-shops", chromedp.ByQuery),
		chromedp.WaitVisible("#create-shop", chromedp.ByQuery),
		chromedp.SendKeys("#new-id", "teahouse", chromedp.ByQuery),
		chromedp.SendKeys("#new-name", "Tea House", chromedp.ByQuery),
		chromedp.SetValue("#new-language", "en", chromedp.ByQuery),
		chromedp.Click("#create", chromedp.ByQuery),
		chromedp.WaitVisible("#once", chromedp.ByQuery),
		chromedp.Text("#once-secret", &once, chromedp.ByQuery),
	)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(strings.TrimSpace(once)) {
		t.Fatalf("the webhook secret shown once: %q", once)
	}
	if s := textOf(t, tab, "#notice"); !strings.Contains(s, "teahouse") {
		t.Fatalf("notice %q", s)
	}

	run(t, tab, "set limits and the webhook",
		chromedp.SetValue("#f-limits-rate_per_second", "25", chromedp.ByQuery),
		chromedp.SetValue("#f-limits-user_rate_per_minute", "12", chromedp.ByQuery),
		chromedp.SetValue("#f-admission-max_wait_p2", "20s", chromedp.ByQuery),
		chromedp.SetValue("#f-webhook-url", "https://teahouse.example/hooks", chromedp.ByQuery),
		chromedp.SetValue("#f-rules-p0", "退款\nrefund", chromedp.ByQuery),
		chromedp.Click("#save", chromedp.ByQuery),
		chromedp.WaitVisible("#flash", chromedp.ByQuery),
	)
	if s := textOf(t, tab, "#flash"); !strings.Contains(s, "Settings saved") {
		t.Fatalf("after saving: %q", s)
	}
	c, err := b.db.ShopConfig(ctx, "teahouse")
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.RatePerSecond != 25 || c.Limits.UserRatePerMinute != 12 || c.Admission.MaxWaitP2.String() != "20s" ||
		c.API.WebhookURL != "https://teahouse.example/hooks" || len(c.Rules) != 2 || c.Language != "en" ||
		c.API.WebhookSecret != strings.TrimSpace(once) {
		t.Fatalf("stored %+v", c)
	}
	var stored string
	if err := b.conn.QueryRow(ctx, `SELECT webhook_secret FROM shop_api_settings WHERE shop_id = 'teahouse'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, secrets.Prefix) {
		t.Fatalf("the webhook secret is stored as %q", stored)
	}
	var page string
	run(t, tab, "reload", chromedp.Reload(), chromedp.WaitVisible("#settings", chromedp.ByQuery),
		chromedp.OuterHTML("html", &page, chromedp.ByQuery))
	if strings.Contains(page, strings.TrimSpace(once)) || !strings.Contains(page, secrets.Mask(strings.TrimSpace(once))) {
		t.Fatal("the settings page shows the webhook secret, or not even its mask")
	}
	if updates := b.audit(t, "shop.update"); len(updates) != 1 || !strings.Contains(string(updates[0].Details), "limits.rate_per_second") {
		t.Fatalf("audit %+v", updates)
	}

	run(t, tab, "upload the FAQ",
		chromedp.Click("#to-faq", chromedp.ByQuery),
		chromedp.WaitVisible("#faq-upload", chromedp.ByQuery),
		chromedp.SetUploadFiles("#faq-file", []string{faqFile}, chromedp.ByQuery),
		chromedp.Click("#faq-import", chromedp.ByQuery),
		chromedp.WaitVisible("#flash", chromedp.ByQuery),
	)
	if s := textOf(t, tab, "#flash"); !strings.Contains(s, "3 new") {
		t.Fatalf("after the upload: %q", s)
	}
	var rows int
	run(t, tab, "count entries", chromedp.Evaluate(`document.querySelectorAll("#faq-entries tr[data-entry]").length`, &rows))
	if rows != 3 {
		t.Fatalf("%d entries listed, want 3", rows)
	}

	run(t, tab, "try a question",
		chromedp.SendKeys("#faq-question", "双11的满减是怎么算的", chromedp.ByQuery),
		chromedp.Click("#faq-try", chromedp.ByQuery),
		chromedp.WaitVisible("#trial", chromedp.ByQuery),
	)
	if s := textOf(t, tab, "#trial-verdict"); !strings.Contains(s, "would answer this on its own") {
		t.Fatalf("verdict %q", s)
	}
	var first, conf string
	run(t, tab, "read the best match",
		chromedp.Text("#matches tr.match td:nth-child(2)", &first, chromedp.ByQuery),
		chromedp.Text("#matches tr.match td.conf", &conf, chromedp.ByQuery))
	if !strings.Contains(first, "满减") || conf == "" || conf == "0.00" {
		t.Fatalf("best match %q at %q", first, conf)
	}

	// Not an admin: no shop pages.
	op, _ := b.loggedIn(t, storage.RoleOperator, "")
	if p := op.get("/console/shops/teahouse"); p.status != http.StatusForbidden {
		t.Errorf("an operator opened the shop page: %d", p.status)
	}
}
