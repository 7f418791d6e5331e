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
	exists bool
	limits Limits
	abuse  storage.EdgeLimits
	rules  []Rule
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
}

type shopEntry struct {
	info  *shopInfo
	until time.Time
}

func (d *shopDirectory) lookup(ctx context.Context, shop string) (*shopInfo, error) {
	now := time.Now()
	d.mu.Lock()
	ent, ok := d.entries[shop]
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
	d.entries[shop] = shopEntry{info: info, until: now.Add(ttl)}
	d.mu.Unlock()
	return info, nil
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
		abuse:   s.EdgeLimits,
		rules:   d.rules,
		origins: s.AllowedOrigins,
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
