package shopadmin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/shopadmin"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/secrets"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

var platform = shopadmin.Operator{ID: "root@example.com", Shop: storage.AllShops}

func setup(t *testing.T, allowPrivate bool) (*shopadmin.Admin, *storage.DB) {
	t.Helper()
	db := storagetest.DB(t)
	box, err := secrets.New(bytes.Repeat([]byte{9}, secrets.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	db.UseSecrets(box)
	a, err := shopadmin.New(shopadmin.Config{DB: db, AllowPrivateURLs: allowPrivate,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return a, db
}

func patch(t *testing.T, js string) shopadmin.Patch {
	t.Helper()
	p, err := shopadmin.DecodePatch([]byte(js))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return p
}

func TestAShopIsCreatedChangedAndShownWithItsSecretsMasked(t *testing.T) {
	t.Parallel()
	a, db := setup(t, false)
	ctx := context.Background()
	created, err := a.Create(ctx, platform, "acme", "Acme", patch(t, `{"language":"en","limits":{"rate_per_second":40},
		"llm":{"chain":[{"model":"m1","base_url":"https://a.example/v1","api_key":"sk-aaaaaaaaaaaa1111"}]},
		"webhook":{"url":"https://acme.example/hooks"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(created.WebhookSecret) != 64 {
		t.Fatalf("generated webhook secret %q", created.WebhookSecret)
	}
	s := created.Shop
	if s.Language != "en" || s.Limits.RatePerSecond != 40 || s.LLM.Chain[0].APIKey != "••••1111" ||
		s.Webhook.Secret != secrets.Mask(created.WebhookSecret) || s.Webhook.URL != "https://acme.example/hooks" {
		t.Fatalf("created %+v", s)
	}
	if _, err := a.Create(ctx, platform, "acme", "again", shopadmin.Patch{}); !errors.Is(err, storage.ErrShopExists) {
		t.Fatalf("second create: %v", err)
	}
	for _, bad := range []string{"", "has space", strings.Repeat("x", 65)} {
		if _, err := a.Create(ctx, platform, bad, "x", shopadmin.Patch{}); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
			t.Errorf("create %q: %v", bad, err)
		}
	}

	s, err = a.Update(ctx, platform, "acme", patch(t, `{"money":{"coupon_max_cents":1500,"llm_spend_cap_per_day_cents":null},
		"admission":{"max_wait_p2":"20s"},"rules":{"p0":["退款"," refund ",""]},"shop_api":{"secret":"sk-shop-api-secret-9999"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if *s.Money.CouponMaxCents != 1500 || time_(s.Admission.MaxWaitP2) != "20s" || len(s.Rules["p0"]) != 2 ||
		s.ShopAPI.Secret != "••••9999" || s.Limits.RatePerSecond != 40 {
		t.Fatalf("updated %+v", s)
	}
	// null puts a setting back to its default.
	if s, err = a.Update(ctx, platform, "acme", patch(t, `{"limits":{"rate_per_second":null}}`)); err != nil || s.Limits.RatePerSecond != 0 {
		t.Fatalf("null: %+v, %v", s.Limits, err)
	}

	// The audit names what changed; a secret's value never.
	entries, err := db.AuditLog(ctx, "acme", 0, 10)
	if err != nil || len(entries) != 3 {
		t.Fatalf("audit: %d entries, %v", len(entries), err)
	}
	all := ""
	for _, e := range entries {
		var b bytes.Buffer
		_ = json.Compact(&b, e.Details)
		all += b.String()
	}
	for _, want := range []string{`"money.coupon_max_cents":[null,1500]`, `"shop_api.secret":"changed"`,
		`"llm.chain[0].api_key":"changed"`, `"limits.rate_per_second":[40,0]`} {
		if !strings.Contains(all, want) {
			t.Errorf("audit lacks %s: %s", want, all)
		}
	}
	for _, secret := range []string{"sk-aaaaaaaaaaaa1111", "sk-shop-api-secret-9999", created.WebhookSecret, "1111", "9999"} {
		if strings.Contains(all, secret) {
			t.Errorf("audit shows %q", secret)
		}
	}
	// A patch that changes nothing is not audited.
	if _, err := a.Update(ctx, platform, "acme", patch(t, `{"language":"en"}`)); err != nil {
		t.Fatal(err)
	}
	if entries, _ := db.AuditLog(ctx, "acme", 0, 10); len(entries) != 3 {
		t.Errorf("a no-op patch was audited: %d entries", len(entries))
	}
}

func time_(d shopadmin.Duration) string { return d.String() }

// Every URL an admin gives passes the SSRF rules of the shop calls: https,
// no address that is not public, no credentials in it.
func TestURLsThatCouldReachPeakdesksOwnNetworkAreRefused(t *testing.T) {
	t.Parallel()
	a, _ := setup(t, false)
	ctx := context.Background()
	if _, err := a.Create(ctx, platform, "s1", "s1", shopadmin.Patch{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ js, field string }{
		{`{"shop_api":{"base_url":"https://127.0.0.1:8080"}}`, "shop_api.base_url"},
		{`{"webhook":{"url":"https://169.254.169.254/latest/meta-data"}}`, "webhook.url"},
		{`{"webhook":{"url":"http://shop.example/hooks"}}`, "webhook.url"},
		{`{"webhook":{"url":"https://localhost/hooks"}}`, "webhook.url"},
		{`{"llm":{"base_url":"https://10.0.0.7/v1"}}`, "llm.base_url"},
		{`{"llm":{"chain":[{"model":"m","base_url":"https://[::1]/v1"}]}}`, "llm.chain[0].base_url"},
		{`{"shop_api":{"base_url":"https://user:pw@shop.example"}}`, "shop_api.base_url"},
		{`{"limits":{"rate_per_second":-1}}`, "limits.rate_per_second"},
		{`{"language":"fr"}`, "language"},
		{`{"llm":{"temperature":3}}`, "llm.temperature"},
		{`{"admission":{"max_wait_p0":"10ms"}}`, "admission.max_wait_p0"},
		{`{"webhook":{"secret":null}}`, "webhook.secret"},
	} {
		_, err := a.Update(ctx, platform, "s1", patch(t, tc.js))
		var pe *peakdesk.Error
		if !errors.As(err, &pe) || pe.Code != peakdesk.EInvalid || pe.Field != tc.field {
			t.Errorf("%s: %v, want invalid_argument on %s", tc.js, err, tc.field)
		}
	}
	if _, err := shopadmin.DecodePatch([]byte(`{"limits":{"rate_per_secnd":5}}`)); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
		t.Errorf("a misspelt field: %v", err)
	}
	if _, err := a.Update(ctx, platform, "s1", patch(t, `{"webhook":{"url":"https://shop.example/hooks"}}`)); err != nil {
		t.Errorf("a public https URL: %v", err)
	}
}

// A stored key stays with its provider's base URL: a model moved to another
// base URL without a key of its own loses the key, so no admin can send a
// stored key to an address of their choosing. Reordering the chain keeps
// the keys.
func TestAStoredKeyNeverFollowsAModelToAnotherBaseURL(t *testing.T) {
	t.Parallel()
	a, db := setup(t, false)
	ctx := context.Background()
	if _, err := a.Create(ctx, platform, "s1", "s1", patch(t, `{"llm":{"chain":[
		{"model":"m1","base_url":"https://a.example/v1","api_key":"sk-key-of-provider-a"},
		{"model":"m2","base_url":"https://b.example/v1","api_key":"sk-key-of-provider-b"}]},
		"shop_api":{"base_url":"https://shop.example","secret":"shop-secret-value-1"}}`)); err != nil {
		t.Fatal(err)
	}
	// Swap: both keep their keys.
	if _, err := a.Update(ctx, platform, "s1", patch(t, `{"llm":{"chain":[
		{"model":"m2","base_url":"https://b.example/v1"},{"model":"m1","base_url":"https://a.example/v1"}]}}`)); err != nil {
		t.Fatal(err)
	}
	c, _ := db.ShopConfig(ctx, "s1")
	if c.LLM.Chain[0].APIKey != "sk-key-of-provider-b" || c.LLM.Chain[1].APIKey != "sk-key-of-provider-a" {
		t.Fatalf("after a swap: %+v", c.LLM.Chain)
	}
	// Moved to an address of the admin's choosing: no key goes along.
	if _, err := a.Update(ctx, platform, "s1", patch(t, `{"llm":{"chain":[{"model":"m2","base_url":"https://evil.example/v1"}]},
		"shop_api":{"base_url":"https://evil.example"}}`)); err != nil {
		t.Fatal(err)
	}
	c, _ = db.ShopConfig(ctx, "s1")
	if c.LLM.Chain[0].APIKey != "" || c.API.Secret != "" {
		t.Fatalf("a key followed to another base URL: %+v / %q", c.LLM.Chain, c.API.Secret)
	}
}

// A shop's own admin administers that shop only, and not the limits that
// share the desk among shops.
func TestAShopsAdminAdministersItsShopOnly(t *testing.T) {
	t.Parallel()
	a, _ := setup(t, false)
	ctx := context.Background()
	for _, id := range []string{"mine", "theirs"} {
		if _, err := a.Create(ctx, platform, id, id, shopadmin.Patch{}); err != nil {
			t.Fatal(err)
		}
	}
	own := shopadmin.Operator{ID: "owner@mine.example", Shop: "mine"}
	if _, err := a.Update(ctx, own, "mine", patch(t, `{"language":"en","webhook":{"url":"https://mine.example/h"}}`)); err != nil {
		t.Fatalf("own settings: %v", err)
	}
	if _, err := a.Update(ctx, own, "mine", patch(t, `{"limits":{"rate_per_second":100000}}`)); peakdesk.ErrorCode(err) != peakdesk.EPermissionDenied {
		t.Errorf("own limits: %v", err)
	}
	if _, err := a.Update(ctx, own, "mine", patch(t, `{"admission":{"max_wait_p2":"1h"}}`)); peakdesk.ErrorCode(err) != peakdesk.EPermissionDenied {
		t.Errorf("own admission: %v", err)
	}
	if _, err := a.Get(ctx, own, "theirs"); peakdesk.ErrorCode(err) != peakdesk.ENotFound {
		t.Errorf("another shop: %v", err)
	}
	if _, err := a.Create(ctx, own, "third", "x", shopadmin.Patch{}); peakdesk.ErrorCode(err) != peakdesk.EPermissionDenied {
		t.Errorf("create: %v", err)
	}
	if list, err := a.List(ctx, own, "", 100); err != nil || len(list) != 1 || list[0].ID != "mine" {
		t.Errorf("list %+v, %v", list, err)
	}
	if _, err := a.TryFAQ(ctx, own, "theirs", "hi"); peakdesk.ErrorCode(err) != peakdesk.ENotFound {
		t.Errorf("another shop's FAQ: %v", err)
	}
}

func TestTheFAQIsUploadedEditedAndTriedAsTheWorkersWouldSearchIt(t *testing.T) {
	t.Parallel()
	a, db := setup(t, false)
	ctx := context.Background()
	if _, err := a.Create(ctx, platform, "s1", "s1", shopadmin.Patch{}); err != nil {
		t.Fatal(err)
	}
	csv := "question,answer,tags\n" +
		"双11满减怎么算？,每满300减50，可以跨店累计。,满减|活动\n" +
		"How long does delivery take?,Orders ship within 48 hours and arrive in 3-5 days.,shipping\n" +
		"可以开发票吗？,可以，在订单详情页申请电子发票。,发票\n"
	res, err := a.ImportFAQ(ctx, platform, "s1", "faq.csv", strings.NewReader(csv), false)
	if err != nil || res.Inserted != 3 {
		t.Fatalf("import %+v, %v", res, err)
	}
	if _, err := a.ImportFAQ(ctx, platform, "s1", "faq.csv", strings.NewReader("just one field\n"), false); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
		t.Errorf("a bad file: %v", err)
	}
	tr, err := a.TryFAQ(ctx, platform, "s1", "双11满减是怎么算的")
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Matches) == 0 || !strings.HasPrefix(tr.Matches[0].Question, "双11满减") || !tr.AnswersAlone ||
		tr.Matches[0].Confidence < tr.Threshold {
		t.Fatalf("trial %+v", tr)
	}
	if tr, err = a.TryFAQ(ctx, platform, "s1", "what is the meaning of life"); err != nil || tr.AnswersAlone {
		t.Fatalf("an off-topic question: %+v, %v", tr, err)
	}

	entries, _ := a.FAQ(ctx, platform, "s1")
	e := entries[2]
	e.Answer = "可以，支付后 24 小时内开具电子发票。"
	if _, err := a.PutFAQ(ctx, platform, "s1", e); err != nil {
		t.Fatal(err)
	}
	e.Question = entries[0].Question
	if _, err := a.PutFAQ(ctx, platform, "s1", e); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
		t.Errorf("a duplicate question: %v", err)
	}
	if err := a.DeleteFAQ(ctx, platform, "s1", entries[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteFAQ(ctx, platform, "s1", entries[1].ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	after, _ := a.FAQ(ctx, platform, "s1")
	if len(after) != 2 || after[1].Answer != "可以，支付后 24 小时内开具电子发票。" {
		t.Fatalf("after edits %+v", after)
	}
	audit, _ := db.AuditLog(ctx, "s1", 0, 10)
	var actions []string
	for _, e := range audit {
		actions = append(actions, e.Action)
	}
	if got := strings.Join(actions, " "); got != "shop.faq.delete shop.faq.update shop.faq.import shop.create" {
		t.Errorf("audit %s", got)
	}
}

// The handoff settings and order_answers are set like any other setting and
// are what the relay (handoff_sla notices), the edge and workers (handoff
// keywords) and the order tools (order_answers) read.
func TestHandoffSettingsAndOrderAnswersAreShopSettings(t *testing.T) {
	t.Parallel()
	a, db := setup(t, false)
	ctx := context.Background()
	created, err := a.Create(ctx, platform, "desk", "Desk", shopadmin.Patch{})
	if err != nil {
		t.Fatal(err)
	}
	if s := created.Shop; time_(s.Handoff.SLA) != "10m0s" || len(s.Handoff.Keywords) != 0 || s.OrderAnswers != "llm" {
		t.Fatalf("a new shop's defaults: %+v, order_answers %q", s.Handoff, s.OrderAnswers)
	}
	s, err := a.Update(ctx, platform, "desk", patch(t,
		`{"handoff":{"sla":"90s","keywords":["找店长"," 投诉经理 ","","找店长"]},"order_answers":"direct"}`))
	if err != nil {
		t.Fatal(err)
	}
	if time_(s.Handoff.SLA) != "1m30s" || strings.Join(s.Handoff.Keywords, "|") != "找店长|投诉经理" || s.OrderAnswers != "direct" {
		t.Fatalf("updated: %+v, order_answers %q", s.Handoff, s.OrderAnswers)
	}
	ts, err := db.ShopTakeoverSettings(ctx, "desk")
	if err != nil || ts.SLA.String() != "1m30s" || strings.Join(ts.Keywords, "|") != "找店长|投诉经理" {
		t.Fatalf("stored takeover settings %+v, %v", ts, err)
	}
	if mode, err := db.ShopOrderAnswers(ctx, "desk"); err != nil || mode != "direct" {
		t.Fatalf("stored order_answers %q, %v", mode, err)
	}
	// Changing another setting keeps them.
	if s, err = a.Update(ctx, platform, "desk", patch(t, `{"language":"en"}`)); err != nil ||
		s.OrderAnswers != "direct" || len(s.Handoff.Keywords) != 2 {
		t.Fatalf("after another change: %+v, %v", s, err)
	}

	for _, bad := range []struct{ js, field string }{
		{`{"handoff":{"sla":"500ms"}}`, "handoff.sla"},
		{`{"handoff":{"keywords":["` + strings.Repeat("长", 51) + `"]}}`, "handoff.keywords"},
		{`{"order_answers":"sometimes"}`, "order_answers"},
	} {
		_, err := a.Update(ctx, platform, "desk", patch(t, bad.js))
		var pe *peakdesk.Error
		if !errors.As(err, &pe) || pe.Code != peakdesk.EInvalid || pe.Field != bad.field {
			t.Errorf("%s: %v, want invalid %s", bad.js, err, bad.field)
		}
	}
	// null puts them back to their defaults.
	if s, err = a.Update(ctx, platform, "desk", patch(t, `{"handoff":{"sla":null,"keywords":null},"order_answers":null}`)); err != nil ||
		time_(s.Handoff.SLA) != "10m0s" || len(s.Handoff.Keywords) != 0 || s.OrderAnswers != "llm" {
		t.Fatalf("null: %+v, %v", s, err)
	}
}
