package answer

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// route is what a shop's answers go by: its provider and model chain, and
// its limits on LLM use.
type route struct {
	llm.Provider
	// ownKey: the API key is the shop's own, not the process-wide one.
	ownKey bool
	limits storage.LLMLimits
}

// settingsCache keeps each shop's route for a while, so that a message costs
// no Postgres read for it. A change of a shop's settings or limits applies
// within the TTL.
type settingsCache struct {
	db  *storage.DB
	def llm.Provider
	ttl time.Duration

	mu sync.Mutex
	m  map[string]cachedRoute
}

type cachedRoute struct {
	r       route
	expires time.Time
}

func newSettingsCache(db *storage.DB, def llm.Provider, ttl time.Duration) *settingsCache {
	return &settingsCache{db: db, def: def, ttl: ttl, m: map[string]cachedRoute{}}
}

// get returns shop's route: its own provider settings over the default,
// field by field, and its limits. When Postgres fails it keeps using what it
// had (or the defaults: no spend cap until the shop's limits were read).
func (c *settingsCache) get(ctx context.Context, shop string, log *slog.Logger) route {
	now := time.Now()
	c.mu.Lock()
	cached, ok := c.m[shop]
	c.mu.Unlock()
	if ok && now.Before(cached.expires) {
		return cached.r
	}
	r := route{Provider: c.def, limits: storage.DefaultLLMLimits(shop)}
	if ok {
		r = cached.r
	}
	failed := false
	s, err := c.db.ShopLLMSettings(ctx, shop)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		r.Provider, r.ownKey = c.def, false
	case err != nil:
		log.Warn("shop llm settings unavailable; using the last known or default", "err", err)
		failed = true
	default:
		r.Provider, r.ownKey = c.def, false
		if s.BaseURL != "" {
			// Another provider: the default key is not for it.
			r.BaseURL, r.APIKey, r.ownKey = s.BaseURL, s.APIKey, true
		} else if s.APIKey != "" {
			r.APIKey, r.ownKey = s.APIKey, true
		}
		if len(s.Models) > 0 {
			r.Models = s.Models
		}
	}
	l, err := c.db.ShopLLMLimits(ctx, shop)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		r.limits = storage.DefaultLLMLimits(shop)
	case err != nil:
		log.Warn("shop llm limits unavailable; using the last known or default", "err", err)
		failed = true
	default:
		r.limits = *l
	}
	expires := now.Add(c.ttl)
	if failed {
		// Try again soon, not at every message.
		expires = now.Add(min(c.ttl, 5*time.Second))
	}
	c.put(shop, r, expires)
	return r
}

func (c *settingsCache) put(shop string, r route, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[shop] = cachedRoute{r: r, expires: expires}
}
