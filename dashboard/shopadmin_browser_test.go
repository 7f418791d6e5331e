package dashboard_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/secrets"
)

// shopAdminTexts are what the shop pages say in one language.
type shopAdminTexts struct {
	created, saved, imported, entrySaved, entryDeleted, alone, limitsLegend string
}

// Shop administration in a real browser, in English and in Chinese: an
// admin creates a shop and sees its webhook secret once, sets its request
// limits, admission threshold, keyword rules and webhook, uploads an FAQ
// file, edits one entry and deletes another, and tries a question, which
// the FAQ would answer on its own with the best match shown first.
// Everything lands in Postgres (secrets sealed) and in the audit log, and
// the page never shows the secret again; an operator who is not an admin
// gets no shop page. With -update-screenshots it writes
// docs/console-shops.png (the settings) and docs/console-shop-faq.png.
func TestBrowserShopAdministration(t *testing.T) {
	b := setup(t, bundleOptions{})
	box, err := secrets.New(bytes.Repeat([]byte{6}, secrets.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	b.db.UseSecrets(box)
	faqFile := filepath.Join(t.TempDir(), "teahouse-faq.csv")
	if err := os.WriteFile(faqFile, []byte("question,answer,tags\n"+
		"双11满减怎么算？,每满300减50，可以跨店累计。,满减|活动\n"+
		"可以开发票吗？,可以，在订单详情页申请电子发票。,发票\n"+
		"How long does delivery take?,Orders ship within 48 hours.,shipping\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	browser := newBrowser(t, 1440, 1000)
	admin := b.operator(t, storage.RoleAdmin, "")

	for _, tc := range []struct {
		lang string
		want shopAdminTexts
	}{
		{"en", shopAdminTexts{created: "Shop teahouse-en created", saved: "Settings saved", imported: "3 new",
			entrySaved: "Entry saved", entryDeleted: "Entry deleted", alone: "would answer this on its own",
			limitsLegend: "Request limits"}},
		{"zh", shopAdminTexts{created: "店铺 teahouse-zh 已创建", saved: "设置已保存", imported: "新增 3",
			entrySaved: "条目已保存", entryDeleted: "条目已删除", alone: "FAQ 可以独立回答",
			limitsLegend: "请求限流"}},
	} {
		t.Run(tc.lang, func(t *testing.T) {
			shop := "teahouse-" + tc.lang
			tab := b.loginTab(t, browser, admin)
			run(t, tab, "switch to "+tc.lang,
				chromedp.Navigate(b.url+"/console/lang?to="+tc.lang+"&back=/console/"),
				chromedp.WaitVisible("#live", chromedp.ByQuery))
			b.adminShopInBrowser(t, tab, shop, faqFile, tc.want, tc.lang == "en" && *updateScreenshots)
		})
	}

	// Not an admin: no shop pages.
	op, _ := b.loggedIn(t, storage.RoleOperator, "")
	if p := op.get("/console/shops/teahouse-en"); p.status != http.StatusForbidden {
		t.Errorf("an operator opened the shop page: %d", p.status)
	}
}

// adminShopInBrowser creates shop in the logged-in admin tab and
// administers it, checking the pages say want.
func (b *testBundle) adminShopInBrowser(t *testing.T, tab context.Context, shop, faqFile string, want shopAdminTexts, screenshots bool) {
	ctx := context.Background()
	var once string
	run(t, tab, "create a shop",
		chromedp.Click("#nav-shops", chromedp.ByQuery),
		chromedp.WaitVisible("#create-shop", chromedp.ByQuery),
		chromedp.SendKeys("#new-id", shop, chromedp.ByQuery),
		chromedp.SendKeys("#new-name", "Tea House", chromedp.ByQuery),
		chromedp.SetValue("#new-language", "en", chromedp.ByQuery),
		chromedp.Click("#create", chromedp.ByQuery),
		chromedp.WaitVisible("#once", chromedp.ByQuery),
		chromedp.Text("#once-secret", &once, chromedp.ByQuery),
	)
	once = strings.TrimSpace(once)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(once) {
		t.Fatalf("the webhook secret shown once: %q", once)
	}
	if s := textOf(t, tab, "#notice"); !strings.Contains(s, want.created) {
		t.Fatalf("notice %q, want %q", s, want.created)
	}
	if s := textOf(t, tab, "#settings legend:nth-of-type(1)"); s == "" {
		t.Fatal("the settings form has no legend")
	}
	if s := textOf(t, tab, "#settings"); !strings.Contains(s, want.limitsLegend) {
		t.Fatalf("the settings form does not say %q", want.limitsLegend)
	}

	run(t, tab, "set limits, rules and the webhook",
		chromedp.SetValue("#f-limits-rate_per_second", "25", chromedp.ByQuery),
		chromedp.SetValue("#f-limits-user_rate_per_minute", "12", chromedp.ByQuery),
		chromedp.SetValue("#f-admission-max_wait_p2", "20s", chromedp.ByQuery),
		chromedp.SetValue("#f-webhook-url", "https://teahouse.example/hooks", chromedp.ByQuery),
		chromedp.SetValue("#f-rules-p0", "退款\nrefund", chromedp.ByQuery),
		chromedp.SetValue("#f-llm-chain-model-0", "qwen-max", chromedp.ByQuery),
		chromedp.SetValue("#f-llm-chain-model-1", "deepseek-chat", chromedp.ByQuery),
		chromedp.SetValue("#f-llm-chain-base_url-1", "https://api.deepseek.example/v1", chromedp.ByQuery),
		chromedp.SetValue("#f-llm-chain-api_key-1", "sk-deepseek-browser-0123456789", chromedp.ByQuery),
		chromedp.SetValue("#f-handoff-sla", "3m", chromedp.ByQuery),
		chromedp.SetValue("#f-handoff-keywords", "找店长\n投诉经理", chromedp.ByQuery),
		chromedp.SetValue("#f-order_answers", "direct", chromedp.ByQuery),
		chromedp.Click("#save", chromedp.ByQuery),
		chromedp.WaitVisible("#flash", chromedp.ByQuery),
	)
	if s := textOf(t, tab, "#flash"); !strings.Contains(s, want.saved) {
		t.Fatalf("after saving: %q, want %q", s, want.saved)
	}
	c, err := b.db.ShopConfig(ctx, shop)
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.RatePerSecond != 25 || c.Limits.UserRatePerMinute != 12 || c.Admission.MaxWaitP2 != 20*time.Second ||
		c.API.WebhookURL != "https://teahouse.example/hooks" || len(c.Rules) != 2 || c.Language != "en" ||
		c.API.WebhookSecret != once || len(c.LLM.Chain) != 2 || c.LLM.Chain[1].APIKey != "sk-deepseek-browser-0123456789" ||
		c.Takeover.SLA != 3*time.Minute || strings.Join(c.Takeover.Keywords, "|") != "找店长|投诉经理" || c.OrderAnswers != "direct" {
		t.Fatalf("stored %+v", c)
	}
	var stored string
	if err := b.conn.QueryRow(ctx, `SELECT a.webhook_secret || ' ' || m.api_key FROM shop_api_settings a
		JOIN shop_llm_models m ON m.shop_id = a.shop_id AND m.model = 'deepseek-chat'
		WHERE a.shop_id = $1`, shop).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if strings.Count(stored, secrets.Prefix) != 2 || strings.Contains(stored, once) || strings.Contains(stored, "sk-deepseek") {
		t.Fatalf("the secrets are stored as %q", stored)
	}
	var page string
	run(t, tab, "reload", chromedp.Reload(), chromedp.WaitVisible("#settings", chromedp.ByQuery),
		chromedp.OuterHTML("html", &page, chromedp.ByQuery))
	if strings.Contains(page, once) || !strings.Contains(page, secrets.Mask(once)) ||
		strings.Contains(page, "sk-deepseek-browser") || !strings.Contains(page, "••••6789") {
		t.Fatal("the settings page shows a secret, or not even its mask")
	}
	if updates := b.shopAudit(t, shop, "shop.update"); len(updates) != 1 ||
		!strings.Contains(string(updates[0].Details), "limits.rate_per_second") || strings.Contains(string(updates[0].Details), "sk-deepseek") {
		t.Fatalf("audit %+v", updates)
	}
	if screenshots {
		b.screenshot(t, tab, "shops", fmt.Sprintf("%s/console/shops/%s", b.url, shop), "#settings")
	}

	run(t, tab, "upload the FAQ",
		chromedp.Click("#to-faq", chromedp.ByQuery),
		chromedp.WaitVisible("#faq-upload", chromedp.ByQuery),
		chromedp.SetUploadFiles("#faq-file", []string{faqFile}, chromedp.ByQuery),
		chromedp.Click("#faq-import", chromedp.ByQuery),
		chromedp.WaitVisible("#flash", chromedp.ByQuery),
	)
	if s := textOf(t, tab, "#flash"); !strings.Contains(s, want.imported) {
		t.Fatalf("after the upload: %q, want %q", s, want.imported)
	}
	if n := faqRows(t, tab); n != 3 {
		t.Fatalf("%d entries listed, want 3", n)
	}

	// Edit the invoice entry, delete the delivery one.
	entries, _, err := b.db.FAQEntries(ctx, shop)
	if err != nil {
		t.Fatal(err)
	}
	var invoice, delivery int64
	for _, e := range entries {
		switch {
		case strings.Contains(e.Question, "发票"):
			invoice = e.ID
		case strings.Contains(e.Question, "delivery"):
			delivery = e.ID
		}
	}
	run(t, tab, "edit an entry",
		chromedp.Click(fmt.Sprintf(`#faq-entries tr[data-entry="%d"] a.edit`, invoice), chromedp.ByQuery),
		chromedp.WaitVisible("#faq-entry", chromedp.ByQuery),
		chromedp.SetValue("#e-answer", "可以，下单后 24 小时内在订单详情页申请电子发票。", chromedp.ByQuery),
		chromedp.SetValue("#e-tags", "发票, 售后", chromedp.ByQuery),
		chromedp.Click("#e-save", chromedp.ByQuery),
		chromedp.WaitVisible("#faq-entries", chromedp.ByQuery),
	)
	if s := textOf(t, tab, "#flash"); !strings.Contains(s, want.entrySaved) {
		t.Fatalf("after the edit: %q, want %q", s, want.entrySaved)
	}
	if s := textOf(t, tab, fmt.Sprintf(`#faq-entries tr[data-entry="%d"]`, invoice)); !strings.Contains(s, "24 小时内") || !strings.Contains(s, "售后") {
		t.Fatalf("the edited entry reads %q", s)
	}
	// The page still shows the edit's flash until the delete's page loads.
	run(t, tab, "delete an entry",
		chromedp.Click(fmt.Sprintf(`#faq-entries tr[data-entry="%d"] button.delete`, delivery), chromedp.ByQuery))
	waitText(t, tab, "#flash", want.entryDeleted)
	if n := faqRows(t, tab); n != 2 {
		t.Fatalf("%d entries listed after the delete, want 2", n)
	}
	if entries, _, err := b.db.FAQEntries(ctx, shop); err != nil || len(entries) != 2 {
		t.Fatalf("stored entries %+v, %v", entries, err)
	}
	for _, action := range []string{"shop.faq.import", "shop.faq.update", "shop.faq.delete"} {
		if n := len(b.shopAudit(t, shop, action)); n != 1 {
			t.Errorf("%d audit records of %s, want 1", n, action)
		}
	}

	run(t, tab, "try a question",
		chromedp.SendKeys("#faq-question", "双11的满减是怎么算的", chromedp.ByQuery),
		chromedp.Click("#faq-try", chromedp.ByQuery),
		chromedp.WaitVisible("#trial", chromedp.ByQuery),
	)
	if s := textOf(t, tab, "#trial-verdict"); !strings.Contains(s, want.alone) {
		t.Fatalf("verdict %q, want %q", s, want.alone)
	}
	var first, conf string
	run(t, tab, "read the best match",
		chromedp.Text("#matches tr.match td:nth-child(2)", &first, chromedp.ByQuery),
		chromedp.Text("#matches tr.match td.conf", &conf, chromedp.ByQuery))
	if !strings.Contains(first, "满减") || conf == "" || conf == "0.00" {
		t.Fatalf("best match %q at %q", first, conf)
	}
	if screenshots {
		var png []byte
		run(t, tab, "screenshot the FAQ", chromedp.CaptureScreenshot(&png))
		writeScreenshot(t, "shop-faq", png)
	}
}

// faqRows counts the FAQ entries listed on the page.
func faqRows(t *testing.T, tab context.Context) int {
	t.Helper()
	var rows int
	run(t, tab, "count entries", chromedp.Evaluate(`document.querySelectorAll("#faq-entries tr[data-entry]").length`, &rows))
	return rows
}

// shopAudit is the audit log's records of action on shop.
func (b *testBundle) shopAudit(t *testing.T, shop, action string) []storage.AuditEntry {
	t.Helper()
	var out []storage.AuditEntry
	for _, e := range b.audit(t, action) {
		if e.Shop == shop {
			out = append(out, e)
		}
	}
	return out
}

// screenshot opens url in tab at 1440×900 and writes docs/console-name.png.
func (b *testBundle) screenshot(t *testing.T, tab context.Context, name, url, waitSel string) {
	t.Helper()
	var png []byte
	run(t, tab, "screenshot "+name, cdppage.BringToFront(), chromedp.EmulateViewport(1440, 900), chromedp.Navigate(url),
		chromedp.WaitVisible(waitSel, chromedp.ByQuery), chromedp.CaptureScreenshot(&png))
	writeScreenshot(t, name, png)
}

func writeScreenshot(t *testing.T, name string, png []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join("..", "docs", "console-"+name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}
