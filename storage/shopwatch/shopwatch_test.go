package shopwatch_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/shopwatch"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// watched starts a Watcher on a fresh database with shop s1; its
// subscriber's calls come out of the returned channel.
func watched(t *testing.T) (*storage.DB, *pgx.Conn, <-chan string) {
	t.Helper()
	ctx := context.Background()
	url := storagetest.DatabaseURL(t)
	db, err := storage.Open(ctx, url, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.EnsureShop(ctx, "s1", "s1"); err != nil {
		t.Fatal(err)
	}
	raw, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close(context.Background()) })
	w, err := shopwatch.New(shopwatch.Config{DB: db, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 100)
	w.Subscribe(func(shop string) { got <- shop })
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	if s := next(t, got, 10*time.Second); s != shopwatch.AllShops {
		t.Fatalf("start delivered %q, want every shop", s)
	}
	return db, raw, got
}

func next(t *testing.T, got <-chan string, within time.Duration) string {
	t.Helper()
	select {
	case s := <-got:
		return s
	case <-time.After(within):
		t.Fatalf("no notification within %v", within)
		return ""
	}
}

// A change of a shop's settings, in any process, reaches the subscribers
// of every other process within 2 s (in practice milliseconds) — not a
// cache's lifetime — and names the shop.
func TestASettingChangeReachesTheSubscribersWithinTwoSeconds(t *testing.T) {
	t.Parallel()
	db, _, got := watched(t)
	ctx := context.Background()
	for i := range 3 {
		committed := time.Now()
		if err := db.SetShopLimits(ctx, "s1", 10+i, 10, 10, 10); err != nil {
			t.Fatal(err)
		}
		if s := next(t, got, 2*time.Second); s != "s1" {
			t.Fatalf("notified %q, want s1", s)
		}
		t.Logf("change %d seen %v after its commit", i, time.Since(committed))
	}
}

// While the listening connection is down nothing arrives; when it is back,
// the subscribers are told that every shop may have changed, and changes
// arrive again.
func TestALostConnectionEndsInEveryShopForgotten(t *testing.T) {
	t.Parallel()
	db, raw, got := watched(t)
	ctx := context.Background()
	tag, err := raw.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %peakdesk_settings%' AND pid <> pg_backend_pid()`)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("terminate the listener: %v, %d rows", err, tag.RowsAffected())
	}
	if s := next(t, got, 15*time.Second); s != shopwatch.AllShops {
		t.Fatalf("after reconnecting: %q, want every shop", s)
	}
	if err := db.SetShopLimits(ctx, "s1", 9, 9, 9, 9); err != nil {
		t.Fatal(err)
	}
	if s := next(t, got, 10*time.Second); s != "s1" {
		t.Fatalf("after reconnecting: notified %q, want s1", s)
	}
}
