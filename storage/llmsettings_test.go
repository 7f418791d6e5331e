package storage_test

import (
	"context"
	"errors"
	"slices"
	"testing"

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
