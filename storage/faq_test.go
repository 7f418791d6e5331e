package storage_test

import (
	"context"
	"errors"
	"testing"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// llmDB is a fresh database with shops "s1" and "s2".
func llmDB(t *testing.T) *storage.DB {
	t.Helper()
	db := storagetest.DB(t)
	for _, s := range []string{"s1", "s2"} {
		if err := db.EnsureShop(context.Background(), s, s); err != nil {
			t.Fatal(err)
		}
	}
	return db
}

func TestImportFAQUpsertsReplacesAndBumpsTheVersion(t *testing.T) {
	t.Parallel()
	db := llmDB(t)
	ctx := context.Background()

	res, err := db.ImportFAQ(ctx, "s1", []storage.FAQEntry{
		{Question: " 多久发货？ ", Answer: "48小时内。", Tags: []string{"发货"}},
		{Question: "能开发票吗？", Answer: "能。"},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	if res != (storage.FAQImport{Inserted: 2}) {
		t.Errorf("first import: %+v", res)
	}
	_, v1, err := db.FAQEntries(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}

	// The same file again changes nothing, not even the version.
	res, err = db.ImportFAQ(ctx, "s1", []storage.FAQEntry{
		{Question: "多久发货？", Answer: "48小时内。", Tags: []string{"发货"}},
		{Question: "能开发票吗？", Answer: "能。"},
	}, false)
	if err != nil || res != (storage.FAQImport{Unchanged: 2}) {
		t.Fatalf("repeat import: %+v %v", res, err)
	}
	if _, v, _ := db.FAQEntries(ctx, "s1"); v != v1 {
		t.Errorf("version moved from %d to %d without a change", v1, v)
	}

	// A new answer updates; replace deletes what the file lacks.
	res, err = db.ImportFAQ(ctx, "s1", []storage.FAQEntry{
		{Question: "多久发货？", Answer: "24小时内。"},
		{Question: "支持花呗吗？", Answer: "支持。"},
	}, true)
	if err != nil {
		t.Fatal(err)
	}
	if res != (storage.FAQImport{Inserted: 1, Updated: 1, Deleted: 1}) {
		t.Errorf("replace import: %+v", res)
	}
	entries, v2, err := db.FAQEntries(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if v2 <= v1 {
		t.Errorf("version %d after changes, was %d", v2, v1)
	}
	got := map[string]string{}
	for _, e := range entries {
		got[e.Question] = e.Answer
		if e.ShopID != "s1" {
			t.Errorf("entry of shop %q", e.ShopID)
		}
	}
	if len(got) != 2 || got["多久发货？"] != "24小时内。" || got["支持花呗吗？"] != "支持。" {
		t.Errorf("entries %v", got)
	}

	versions, err := db.FAQVersions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if versions["s1"] != v2 {
		t.Errorf("FAQVersions[s1] = %d, want %d", versions["s1"], v2)
	}

	// Deleting bumps the version too.
	if err := db.DeleteFAQ(ctx, "s1", entries[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, v3, _ := db.FAQEntries(ctx, "s1"); v3 <= v2 {
		t.Errorf("version %d after a delete, was %d", v3, v2)
	}
}

func TestFAQIsScopedByShop(t *testing.T) {
	t.Parallel()
	db := llmDB(t)
	ctx := context.Background()
	if _, err := db.ImportFAQ(ctx, "s1", []storage.FAQEntry{{Question: "q", Answer: "a"}}, false); err != nil {
		t.Fatal(err)
	}
	entries, v, err := db.FAQEntries(ctx, "s2")
	if err != nil || len(entries) != 0 || v != 0 {
		t.Errorf("s2 sees %v (version %d, err %v)", entries, v, err)
	}
	s1, _, _ := db.FAQEntries(ctx, "s1")
	if err := db.DeleteFAQ(ctx, "s2", s1[0].ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("s2 deleted s1's entry: %v", err)
	}
	// --replace for s2 must not touch s1.
	if _, err := db.ImportFAQ(ctx, "s2", []storage.FAQEntry{{Question: "x", Answer: "y"}}, true); err != nil {
		t.Fatal(err)
	}
	if s1, _, _ := db.FAQEntries(ctx, "s1"); len(s1) != 1 {
		t.Errorf("s1 has %d entries after s2's replace", len(s1))
	}
	if _, err := db.ImportFAQ(ctx, "nope", []storage.FAQEntry{{Question: "q", Answer: "a"}}, false); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("import into a missing shop: %v", err)
	}
}
