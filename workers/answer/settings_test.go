package answer

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// Many answers of one shop arriving together read its settings once (one
// read of Postgres, not one per answer); ForgetShop makes the next answer
// read them again, and it sees the change.
func TestShopSettingsAreReadOncePerShopNotPerAnswer(t *testing.T) {
	t.Parallel()
	db := storagetest.DB(t)
	ctx := context.Background()
	const shop = "settings-shop"
	if err := db.EnsureShop(ctx, shop, shop); err != nil {
		t.Fatal(err)
	}
	if err := db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: shop, MaxTokens: 123}); err != nil {
		t.Fatal(err)
	}
	if err := db.SetShopLLMSettings(ctx, storage.LLMSettings{ShopID: shop, Models: []string{"own"}}); err != nil {
		t.Fatal(err)
	}
	c := newSettingsCache(db, llm.Provider{BaseURL: "http://llm.invalid/v1", Models: []string{"default"}}, time.Hour)
	log := slog.New(slog.DiscardHandler)

	getAll := func(n int) []route {
		out := make([]route, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range out {
			wg.Go(func() {
				<-start
				out[i] = c.get(ctx, shop, log)
			})
		}
		close(start)
		wg.Wait()
		return out
	}
	for _, r := range getAll(25) {
		if r.limits.MaxTokens != 123 || len(r.Models) != 1 || r.Models[0] != "own" {
			t.Fatalf("route %+v, want the shop's limits and chain", r)
		}
	}
	getAll(25)
	if got := c.fetches.Load(); got != 1 {
		t.Fatalf("50 answers read the shop's settings %d times, want once", got)
	}

	if _, err := db.UpdateShop(ctx, shop, func(s *storage.ShopConfig) (*storage.AuditEntry, error) {
		s.Language = "en"
		return &storage.AuditEntry{Actor: "t", Scope: "*", Shop: shop, Action: "shop.update"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	c.forget(shop)
	for _, r := range getAll(25) {
		if r.lang != texts.EN {
			t.Fatalf("after forget: language %v, want en", r.lang)
		}
	}
	if got := c.fetches.Load(); got != 2 {
		t.Fatalf("after forget, 25 answers made %d reads in all, want 2", got)
	}
}

// A shop that is not there gets the defaults, and that is cached too.
func TestSettingsOfAnUnknownShopAreTheDefaults(t *testing.T) {
	t.Parallel()
	db := storagetest.DB(t)
	c := newSettingsCache(db, llm.Provider{BaseURL: "http://llm.invalid/v1", Models: []string{"default"}}, time.Hour)
	log := slog.New(slog.DiscardHandler)
	for range 3 {
		r := c.get(context.Background(), "no-such-shop", log)
		if r.limits.MaxTokens != storage.DefaultLLMMaxTokens || r.lang != texts.DefaultLang || r.Models[0] != "default" {
			t.Fatalf("route %+v, want the defaults", r)
		}
	}
	if got := c.fetches.Load(); got != 1 {
		t.Fatalf("%d reads, want 1", got)
	}
}
