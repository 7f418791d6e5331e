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

// settingsCache keeps each shop's effective provider for a while, so that a
// message costs no Postgres read for it.
type settingsCache struct {
	db  *storage.DB
	def llm.Provider
	ttl time.Duration

	mu sync.Mutex
	m  map[string]cachedRoute
}

type cachedRoute struct {
	p       llm.Provider
	expires time.Time
}

func newSettingsCache(db *storage.DB, def llm.Provider, ttl time.Duration) *settingsCache {
	return &settingsCache{db: db, def: def, ttl: ttl, m: map[string]cachedRoute{}}
}

// get returns shop's provider: its own settings over the default, field by
// field. When Postgres fails it keeps using what it had (or the default).
func (c *settingsCache) get(ctx context.Context, shop string, log *slog.Logger) llm.Provider {
	now := time.Now()
	c.mu.Lock()
	cached, ok := c.m[shop]
	c.mu.Unlock()
	if ok && now.Before(cached.expires) {
		return cached.p
	}
	p := c.def
	s, err := c.db.ShopLLMSettings(ctx, shop)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		log.Warn("shop llm settings unavailable; using the last known or default", "err", err)
		if ok {
			p = cached.p
		}
		// Try again soon, not at every message.
		c.put(shop, p, now.Add(min(c.ttl, 5*time.Second)))
		return p
	default:
		if s.BaseURL != "" {
			// Another provider: the default key is not for it.
			p.BaseURL, p.APIKey = s.BaseURL, s.APIKey
		} else if s.APIKey != "" {
			p.APIKey = s.APIKey
		}
		if len(s.Models) > 0 {
			p.Models = s.Models
		}
	}
	c.put(shop, p, now.Add(c.ttl))
	return p
}

func (c *settingsCache) put(shop string, p llm.Provider, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[shop] = cachedRoute{p: p, expires: expires}
}
