package storage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/secrets"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// sealedBundle is a database whose DB seals secrets with box, and a plain
// connection that reads the columns as Postgres holds them.
type sealedBundle struct {
	db   *storage.DB
	raw  *pgx.Conn
	box  *secrets.Box
	url  string
	plan *storage.DB // the same database without a master key (an old version, a tool)
}

func sealedSetup(t *testing.T) *sealedBundle {
	t.Helper()
	ctx := context.Background()
	b := &sealedBundle{url: storagetest.DatabaseURL(t)}
	var err error
	if b.box, err = secrets.New(bytes.Repeat([]byte{3}, secrets.KeySize)); err != nil {
		t.Fatal(err)
	}
	for _, db := range []**storage.DB{&b.db, &b.plan} {
		if *db, err = storage.Open(ctx, b.url, 4); err != nil {
			t.Fatal(err)
		}
		t.Cleanup((*db).Close)
	}
	b.db.UseSecrets(b.box)
	if b.raw, err = pgx.Connect(ctx, b.url); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.raw.Close(context.Background()) })
	return b
}

// column reads one value as stored.
func (b *sealedBundle) column(t *testing.T, sql string, args ...any) string {
	t.Helper()
	var v string
	if err := b.raw.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func newConfig(id string) *storage.ShopConfig {
	calls := 60
	return &storage.ShopConfig{ID: id, Name: "Shop " + id, Language: "en", Currency: "CNY", RetentionDays: 30,
		Edge:      storage.DefaultEdgeLimits,
		LLMLimits: storage.LLMLimits{MaxTokens: 400, CallsPerUserPerHour: &calls},
		Coupons:   storage.CouponPolicy{PerUserPerDay: 1, BudgetPerDayCents: 50000}}
}

func TestShopConfigRoundTripsWithItsAuditAndSecretsSealedAtRest(t *testing.T) {
	t.Parallel()
	b := sealedSetup(t)
	ctx := context.Background()
	c := newConfig("acme")
	temp := 0.3
	c.Limits = storage.ShopLimits{RatePerSecond: 50, RateBurst: 100}
	c.Admission = storage.ShopAdmission{MaxWaitP2: 20 * time.Second, MinBacklog: 500}
	c.Rules = []storage.PriorityRule{{Priority: peakdesk.P0, Keyword: "退款"}, {Priority: peakdesk.P1, Keyword: "order"}}
	c.LLM = storage.LLMSettings{Chain: []storage.LLMModel{
		{Model: "a-model", BaseURL: "https://a.example/v1", APIKey: "sk-provider-a-0001"},
		{Model: "b-model", BaseURL: "https://b.example/v1", APIKey: "sk-provider-b-0002"}},
		SystemPrompt: "Be brief.", Temperature: &temp}
	c.API = storage.ShopAPISettings{BaseURL: "https://shop.example", Secret: "shop-api-secret-0003",
		WebhookURL: "https://shop.example/hooks", WebhookSecret: "webhook-secret-0004"}
	if err := b.db.CreateShop(ctx, c, &storage.AuditEntry{Actor: "admin@x", Scope: "*", Shop: "acme",
		Action: "shop.create", Target: "shop:acme"}); err != nil {
		t.Fatal(err)
	}
	if err := b.db.CreateShop(ctx, newConfig("acme"), &storage.AuditEntry{Actor: "a", Scope: "*", Action: "shop.create"}); !errors.Is(err, storage.ErrShopExists) {
		t.Fatalf("second create: %v", err)
	}

	got, err := b.db.ShopConfig(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "Shop acme" || got.Language != "en" || got.Limits.RatePerSecond != 50 ||
		got.Admission.MaxWaitP2 != 20*time.Second || got.Admission.MinBacklog != 500 || len(got.Rules) != 2 ||
		len(got.LLM.Chain) != 2 || got.LLM.Chain[1].APIKey != "sk-provider-b-0002" || got.LLM.Chain[1].BaseURL != "https://b.example/v1" ||
		got.LLM.SystemPrompt != "Be brief." || got.LLM.Temperature == nil || *got.LLM.Temperature < 0.29 ||
		got.API.Secret != "shop-api-secret-0003" || got.API.WebhookSecret != "webhook-secret-0004" {
		t.Fatalf("read back %+v", got)
	}

	// At rest, every secret is sealed and none appears in any column.
	for _, q := range []string{
		`SELECT secret FROM shop_api_settings WHERE shop_id = 'acme'`,
		`SELECT webhook_secret FROM shop_api_settings WHERE shop_id = 'acme'`,
		`SELECT api_key FROM shop_llm_models WHERE shop_id = 'acme' AND position = 0`,
		`SELECT api_key FROM shop_llm_models WHERE shop_id = 'acme' AND position = 1`,
	} {
		if v := b.column(t, q); !strings.HasPrefix(v, b.box.CurrentPrefix()) {
			t.Errorf("%s: stored %q", q, v)
		}
	}
	dump := b.column(t, `SELECT concat_ws(' ', (SELECT string_agg(a::text, ' ') FROM shop_api_settings a),
		(SELECT string_agg(m::text, ' ') FROM shop_llm_models m), (SELECT string_agg(s::text, ' ') FROM shop_llm_settings s))`)
	for _, plain := range []string{"sk-provider-a-0001", "sk-provider-b-0002", "shop-api-secret-0003", "webhook-secret-0004"} {
		if strings.Contains(dump, plain) {
			t.Errorf("%s is stored in plaintext", plain)
		}
	}
	// A process without the key cannot read them (and never sees them).
	if _, err := b.plan.ShopConfig(ctx, "acme"); !errors.Is(err, secrets.ErrNoKey) {
		t.Errorf("read without a key: %v", err)
	}
	// A sealed secret moved to another shop's row does not open there.
	if err := b.db.EnsureShop(ctx, "other", "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.raw.Exec(ctx, `UPDATE shop_api_settings SET secret = (SELECT secret FROM shop_api_settings WHERE shop_id = 'acme')
		WHERE shop_id = 'other'`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.db.ShopAPISettings(ctx, "other"); !errors.Is(err, secrets.ErrCorrupt) {
		t.Errorf("a secret copied to another shop: %v", err)
	}

	// An update in one transaction with its audit record; nil audit = no change.
	updated, err := b.db.UpdateShop(ctx, "acme", func(c *storage.ShopConfig) (*storage.AuditEntry, error) {
		c.Limits.RatePerSecond = 70
		c.LLM.Chain = c.LLM.Chain[1:]
		return &storage.AuditEntry{Actor: "admin@x", Scope: "*", Shop: "acme", Action: "shop.update",
			Details: json.RawMessage(`{"changed":["limits.rate_per_second"]}`)}, nil
	})
	if err != nil || updated.Limits.RatePerSecond != 70 {
		t.Fatalf("update: %+v, %v", updated, err)
	}
	if _, err := b.db.UpdateShop(ctx, "acme", func(c *storage.ShopConfig) (*storage.AuditEntry, error) {
		c.Limits.RatePerSecond = 1
		return nil, peakdesk.FieldError("x", "refused")
	}); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
		t.Fatalf("a refused change: %v", err)
	}
	got, _ = b.db.ShopConfig(ctx, "acme")
	if got.Limits.RatePerSecond != 70 || len(got.LLM.Chain) != 1 || got.LLM.Chain[0].Model != "b-model" ||
		got.LLM.Chain[0].APIKey != "sk-provider-b-0002" || len(got.LLM.Models) != 1 {
		t.Fatalf("after update: %+v", got)
	}
	if _, err := b.db.UpdateShop(ctx, "nosuch", func(*storage.ShopConfig) (*storage.AuditEntry, error) { return nil, nil }); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("update of no shop: %v", err)
	}
	audit, err := b.db.AuditLog(ctx, "acme", 0, 10)
	if err != nil || len(audit) != 2 || audit[0].Action != "shop.update" || audit[1].Action != "shop.create" {
		t.Fatalf("audit %+v, %v", audit, err)
	}
	// The edge's and the answerer's reads see the same settings.
	es, err := b.db.ShopSettings(ctx, "acme")
	if err != nil || es.Admission.MaxWaitP2 != 20*time.Second || es.RatePerSecond != 70 {
		t.Fatalf("edge settings %+v, %v", es, err)
	}
	if lang, err := b.db.ShopLanguage(ctx, "acme"); err != nil || lang != "en" {
		t.Fatalf("language %q, %v", lang, err)
	}
}

func TestSecretsWrittenBeforeEncryptionAreSealedAndAKeyRotationResealsThem(t *testing.T) {
	t.Parallel()
	b := sealedSetup(t)
	ctx := context.Background()
	// An older version wrote these in plaintext.
	if err := b.plan.EnsureShop(ctx, "s1", "s1"); err != nil {
		t.Fatal(err)
	}
	if err := b.plan.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "s1", Secret: "legacy-api-secret",
		WebhookSecret: "legacy-webhook-secret"}); err != nil {
		t.Fatal(err)
	}
	if err := b.plan.SetShopLLMSettings(ctx, storage.LLMSettings{ShopID: "s1", APIKey: "legacy-llm-key",
		Chain: []storage.LLMModel{{Model: "m", BaseURL: "https://x.example/v1", APIKey: "legacy-model-key"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.plan.EnsureShopKey(ctx, "s1", "kid-legacy-0001", "legacy-signing-secret-0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	if has, err := b.plan.HasSecrets(ctx); err != nil || !has {
		t.Fatalf("HasSecrets = %v, %v", has, err)
	}
	// Plaintext still reads with a key (before the sweep).
	if s, err := b.db.ShopAPISettings(ctx, "s1"); err != nil || s.Secret != "legacy-api-secret" {
		t.Fatalf("legacy read: %+v, %v", s, err)
	}
	n, err := b.db.SealSecrets(ctx)
	if err != nil || n != 5 {
		t.Fatalf("sealed %d, %v; want 5", n, err)
	}
	if n, err := b.db.SealSecrets(ctx); err != nil || n != 0 {
		t.Fatalf("second sweep sealed %d, %v", n, err)
	}
	for _, q := range []string{`SELECT secret FROM shop_api_settings`, `SELECT webhook_secret FROM shop_api_settings`,
		`SELECT api_key FROM shop_llm_settings`, `SELECT api_key FROM shop_llm_models`, `SELECT secret FROM shop_keys`} {
		if v := b.column(t, q); !strings.HasPrefix(v, b.box.CurrentPrefix()) {
			t.Errorf("%s: %q after the sweep", q, v)
		}
	}
	k, err := b.db.ShopKeyByID(ctx, "kid-legacy-0001")
	if err != nil || k.Secret != "legacy-signing-secret-0123456789abcdef" {
		t.Fatalf("signing key %+v, %v", k, err)
	}

	// A new master key with the old one kept: the sweep re-seals.
	rotated, _ := secrets.New(bytes.Repeat([]byte{4}, secrets.KeySize), bytes.Repeat([]byte{3}, secrets.KeySize))
	db2, err := storage.Open(ctx, b.url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	db2.UseSecrets(rotated)
	if n, err := db2.SealSecrets(ctx); err != nil || n != 5 {
		t.Fatalf("rotation re-sealed %d, %v", n, err)
	}
	if v := b.column(t, `SELECT secret FROM shop_keys`); !strings.HasPrefix(v, rotated.CurrentPrefix()) {
		t.Errorf("after rotation: %q", v)
	}
	c, err := db2.ShopConfig(ctx, "s1")
	if err != nil || c.API.WebhookSecret != "legacy-webhook-secret" || c.LLM.Chain[0].APIKey != "legacy-model-key" {
		t.Fatalf("after rotation %+v, %v", c, err)
	}
	// Without the key, nothing can be stored.
	db3, _ := storage.Open(ctx, b.url, 2)
	defer db3.Close()
	db3.UseSecrets(nil)
	if err := db3.EnsureShop(ctx, "s2", "s2"); !errors.Is(err, storage.ErrNoMasterKey) {
		t.Errorf("a shop created without a master key: %v", err)
	}
}

func TestEveryShopSettingChangeNotifiesItsShop(t *testing.T) {
	t.Parallel()
	b := sealedSetup(t)
	ctx := context.Background()
	if err := b.db.EnsureShop(ctx, "s1", "s1"); err != nil {
		t.Fatal(err)
	}
	l, err := b.db.ListenSettings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	next := func(what string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		shop, err := l.Next(wctx)
		if err != nil || shop != "s1" {
			t.Fatalf("%s: notified %q, %v", what, shop, err)
		}
	}
	if err := b.db.SetShopLimits(ctx, "s1", 5, 5, 5, 5); err != nil {
		t.Fatal(err)
	}
	next("shops")
	if err := b.db.SetPriorityRules(ctx, "s1", []storage.PriorityRule{{Priority: peakdesk.P0, Keyword: "x"}}); err != nil {
		t.Fatal(err)
	}
	next("priority rules") // one notification for the delete and the insert
	if err := b.db.SetShopLLMSettings(ctx, storage.LLMSettings{ShopID: "s1", Models: []string{"m"}}); err != nil {
		t.Fatal(err)
	}
	next("llm settings")
	if err := b.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "s1", WebhookURL: "https://x.example"}); err != nil {
		t.Fatal(err)
	}
	next("shop api settings")
	if _, err := b.db.ImportFAQ(ctx, "s1", []storage.FAQEntry{{Question: "q", Answer: "a"}}, false); err != nil {
		t.Fatal(err)
	}
	next("faq")
	if _, err := b.db.EnsureShopKey(ctx, "s1", "kid-notify-001", "a-signing-secret-0123456789abcdef0123"); err != nil {
		t.Fatal(err)
	}
	next("signing key")
}
