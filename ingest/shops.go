package ingest

import (
	"cmp"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// shopInfo is what the edge knows about one shop.
type shopInfo struct {
	exists    bool
	limits    Limits
	abuse     storage.EdgeLimits
	admission storage.ShopAdmission
	rules     []Rule
	// origins are the web origins allowed to call the API for the shop.
	origins []string
}

// shopDirectory caches shop settings, so the hot path reads Postgres about
// a shop at most every refresh interval. When Postgres is down it keeps
// serving what it knew.
type shopDirectory struct {
	db       *storage.DB
	defaults Limits
	rules    []Rule
	ttl      time.Duration

	mu      sync.Mutex
	entries map[string]shopEntry
	// forgets counts calls of forget: a load that began before one may
	// have read the old settings, and is not cached.
	forgets uint64
}

type shopEntry struct {
	info  *shopInfo
	until time.Time
}

func (d *shopDirectory) lookup(ctx context.Context, shop string) (*shopInfo, error) {
	now := time.Now()
	d.mu.Lock()
	ent, ok := d.entries[shop]
	forgets := d.forgets
	d.mu.Unlock()
	if ok && now.Before(ent.until) {
		return ent.info, nil
	}
	info, err := d.load(ctx, shop)
	if err != nil {
		if ok {
			return ent.info, nil
		}
		return nil, err
	}
	ttl := d.ttl
	if !info.exists {
		ttl = 5 * time.Second
	}
	d.mu.Lock()
	if d.forgets == forgets {
		d.entries[shop] = shopEntry{info: info, until: now.Add(ttl)}
	}
	d.mu.Unlock()
	return info, nil
}

// forget drops what the directory knows of shop (every shop for ""), so
// the next lookup reads it again: its settings changed.
func (d *shopDirectory) forget(shop string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.forgets++
	if shop == "" {
		clear(d.entries)
		return
	}
	delete(d.entries, shop)
}

func (d *shopDirectory) load(ctx context.Context, shop string) (*shopInfo, error) {
	s, err := d.db.ShopSettings(ctx, shop)
	if errors.Is(err, storage.ErrNotFound) {
		return &shopInfo{}, nil
	}
	if err != nil {
		return nil, err
	}
	info := &shopInfo{
		exists: true,
		limits: Limits{
			ShopPerSecond: cmp.Or(s.RatePerSecond, d.defaults.ShopPerSecond),
			ShopBurst:     cmp.Or(s.RateBurst, d.defaults.ShopBurst),
			UserPerMinute: cmp.Or(s.UserRatePerMinute, d.defaults.UserPerMinute),
			UserBurst:     cmp.Or(s.UserRateBurst, d.defaults.UserBurst),
		},
		abuse:     s.EdgeLimits,
		admission: s.Admission,
		rules:     d.rules,
		origins:   s.AllowedOrigins,
	}
	if len(s.Rules) > 0 {
		byPrio := map[peakdesk.Priority][]string{}
		for _, r := range s.Rules {
			byPrio[r.Priority] = append(byPrio[r.Priority], r.Keyword)
		}
		info.rules = nil
		for _, p := range peakdesk.Priorities {
			if kw := byPrio[p]; len(kw) > 0 {
				info.rules = append(info.rules, Rule{Priority: p, Keywords: kw})
			}
		}
	}
	return info, nil
}
