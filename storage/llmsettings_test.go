package storage_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

func TestShopLLMSettingsRoundTrip(t *testing.T) {
	t.Parallel()
	db := llmDB(t)
	ctx := context.Background()
	if _, err := db.ShopLLMSettings(ctx, "s1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("no settings yet: err = %v, want ErrNotFound", err)
	}
	want := storage.LLMSettings{ShopID: "s1", BaseURL: "https://llm.example/v1", APIKey: "k1",
		Models: []string{"big", "small"}}
	if err := db.SetShopLLMSettings(ctx, want); err != nil {
		t.Fatal(err)
	}
	want.Models = []string{"small"}
	want.APIKey = ""
	if err := db.SetShopLLMSettings(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := db.ShopLLMSettings(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if got.BaseURL != want.BaseURL || got.APIKey != "" || !slices.Equal(got.Models, want.Models) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := db.ShopLLMSettings(ctx, "s2"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("s2 sees s1's settings: %v", err)
	}
}

func TestRecordPIIAuditUpsertsPerFirstMessage(t *testing.T) {
	t.Parallel()
	db := llmDB(t)
	ctx := context.Background()
	a := storage.PIIAudit{ShopID: "s1", ConversationID: "c1", MessageIDs: []string{"m1", "m2"},
		Counts: map[string]int{"phone": 2, "email": 1}}
	if err := db.RecordPIIAudit(ctx, a); err != nil {
		t.Fatal(err)
	}
	a.Counts = map[string]int{"bank_card": 1}
	if err := db.RecordPIIAudit(ctx, a); err != nil {
		t.Fatal(err)
	}
	// Nothing masked: no record.
	if err := db.RecordPIIAudit(ctx, storage.PIIAudit{ShopID: "s1", MessageIDs: []string{"m3"}}); err != nil {
		t.Fatal(err)
	}
	got, err := db.PIIAudits(ctx, "s1", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Counts["bank_card"] != 1 || len(got[0].Counts) != 1 ||
		!slices.Equal(got[0].MessageIDs, []string{"m1", "m2"}) {
		t.Errorf("audits %+v", got)
	}
	if other, _ := db.PIIAudits(ctx, "s2", "", 0); len(other) != 0 {
		t.Errorf("s2 sees s1's audits: %+v", other)
	}
}

func TestShopLLMLimitsDefaultsRoundTripAndValidation(t *testing.T) {
	t.Parallel()
	db := llmDB(t)
	ctx := context.Background()

	// A new shop has the defaults: CNY, 400 tokens, no spend cap, 60 calls
	// per user and hour.
	got, err := db.ShopLLMLimits(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	def := storage.DefaultLLMLimits("s1")
	if got.Currency != def.Currency || got.MaxTokens != def.MaxTokens || got.SpendCapPerDayCents != nil ||
		got.CallsPerUserPerHour == nil || *got.CallsPerUserPerHour != *def.CallsPerUserPerHour {
		t.Fatalf("new shop's limits %+v, want the defaults %+v", got, def)
	}

	spend, calls := int64(1234), 5
	if err := db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: "s1", Currency: "USD", MaxTokens: 100,
		SpendCapPerDayCents: &spend, CallsPerUserPerHour: &calls}); err != nil {
		t.Fatal(err)
	}
	got, err = db.ShopLLMLimits(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Currency != "USD" || got.MaxTokens != 100 || got.SpendCapPerDayCents == nil || *got.SpendCapPerDayCents != spend ||
		got.CallsPerUserPerHour == nil || *got.CallsPerUserPerHour != calls {
		t.Errorf("got %+v after setting USD, 100, 1234, 5", got)
	}
	if other, err := db.ShopLLMLimits(ctx, "s2"); err != nil || other.Currency != "CNY" || other.SpendCapPerDayCents != nil {
		t.Errorf("s2 sees s1's limits: %+v %v", other, err)
	}

	// Nil caps remove them; zero values restore the defaults.
	if err := db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: "s1"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.ShopLLMLimits(ctx, "s1"); got.Currency != "CNY" || got.MaxTokens != 400 ||
		got.SpendCapPerDayCents != nil || got.CallsPerUserPerHour != nil {
		t.Errorf("got %+v after clearing", got)
	}

	neg := int64(-1)
	for _, bad := range []storage.LLMLimits{
		{ShopID: "s1", Currency: "cny"},
		{ShopID: "s1", MaxTokens: 40000},
		{ShopID: "s1", SpendCapPerDayCents: &neg},
	} {
		if err := db.SetShopLLMLimits(ctx, bad); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
			t.Errorf("SetShopLLMLimits(%+v) = %v, want invalid_argument", bad, err)
		}
	}
	if err := db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: "nope"}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("unknown shop: %v, want ErrNotFound", err)
	}
	if _, err := db.ShopLLMLimits(ctx, "nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("unknown shop: %v, want ErrNotFound", err)
	}
}

// ShopAnswerSettings reads a shop's LLM settings, limits and language
// together, each as its own read returns it.
func TestShopAnswerSettingsReadsSettingsLimitsAndLanguage(t *testing.T) {
	t.Parallel()
	db := llmDB(t)
	ctx := context.Background()
	if _, err := db.ShopAnswerSettings(ctx, "nowhere"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("no shop: err = %v, want ErrNotFound", err)
	}
	if err := db.EnsureShop(ctx, "as1", "as1"); err != nil {
		t.Fatal(err)
	}
	a, err := db.ShopAnswerSettings(ctx, "as1")
	if err != nil {
		t.Fatal(err)
	}
	if a.LLM != nil || a.Limits.MaxTokens != storage.DefaultLLMMaxTokens || a.Limits.Currency != storage.DefaultCurrency ||
		a.Language == "" {
		t.Fatalf("a new shop: %+v, want no LLM settings, the default limits and a language", a)
	}
	spendCap := int64(500)
	if err := db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: "as1", Currency: "USD", MaxTokens: 99,
		SpendCapPerDayCents: &spendCap}); err != nil {
		t.Fatal(err)
	}
	if err := db.SetShopLLMSettings(ctx, storage.LLMSettings{ShopID: "as1", APIKey: "k-as1",
		Chain: []storage.LLMModel{{Model: "m1"}, {Model: "m2", BaseURL: "https://other.example/v1", APIKey: "k2"}}}); err != nil {
		t.Fatal(err)
	}
	a, err = db.ShopAnswerSettings(ctx, "as1")
	if err != nil {
		t.Fatal(err)
	}
	wantLLM, err := db.ShopLLMSettings(ctx, "as1")
	if err != nil {
		t.Fatal(err)
	}
	wantLimits, err := db.ShopLLMLimits(ctx, "as1")
	if err != nil {
		t.Fatal(err)
	}
	wantLang, err := db.ShopLanguage(ctx, "as1")
	if err != nil {
		t.Fatal(err)
	}
	if a.LLM == nil || a.LLM.APIKey != "k-as1" || !slices.Equal(a.LLM.Chain, wantLLM.Chain) ||
		!slices.Equal(a.LLM.Models, wantLLM.Models) {
		t.Errorf("LLM settings %+v, want %+v", a.LLM, wantLLM)
	}
	if a.Limits.Currency != "USD" || a.Limits.MaxTokens != 99 || a.Limits.SpendCapPerDayCents == nil ||
		*a.Limits.SpendCapPerDayCents != 500 || a.Limits.Currency != wantLimits.Currency {
		t.Errorf("limits %+v, want %+v", a.Limits, wantLimits)
	}
	if a.Language != wantLang {
		t.Errorf("language %q, want %q", a.Language, wantLang)
	}
}
