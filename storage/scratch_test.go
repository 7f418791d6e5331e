package storage_test

import (
	"context"
	"testing"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// A scratch database is migrated and the drill's alone; drop removes it.
func TestScratchDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if _, _, err := storage.ScratchDatabase(ctx, storagetest.AdminURL(), "Bad;name"); err == nil {
		t.Fatal("a prefix that is not a plain name was taken")
	}
	u, drop, err := storage.ScratchDatabase(ctx, storagetest.AdminURL(), "peakdesk_scratch_test_")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = drop(ctx) })
	if u == storagetest.AdminURL() {
		t.Fatal("the scratch database is the server's own")
	}
	db, err := storage.Open(ctx, u, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.EnsureShop(ctx, "drill", "Drill"); err != nil { // migrated
		t.Fatal(err)
	}
	db.Close()
	if err := drop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := drop(ctx); err != nil {
		t.Fatalf("a second drop: %v", err)
	}
	if db, err := storage.Open(ctx, u, 1); err == nil {
		db.Close()
		t.Fatal("the dropped database still answers")
	}
}
