package answer

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// route is what a shop's answers go by: its provider and model chain, and
// its limits on LLM use.
type route struct {
	// Provider is the shop's provider (its own over the default, field by
	// field); Models are the chain's names.
	llm.Provider
	// ownKey: the API key is the shop's own, not the process-wide one.
	ownKey bool
	// chain is each model of Models with its provider: a chain may fail
	// over to another provider.
	chain []step
	// systemPrompt replaces the configured one when not empty.
	systemPrompt string
	// temperature is sent with every call when set.
	temperature *float64
	// lang is the shop's language for customers whose text does not tell.
	lang   texts.Lang
	limits storage.LLMLimits
}

// step is one model of a chain and where it is called.
type step struct {
	model, baseURL, apiKey string
	ownKey                 bool
}

// at returns r for the i-th model of its chain: that model's provider in
// BaseURL, APIKey and ownKey.
func (r route) at(i int) route {
	if i < len(r.chain) {
		s := r.chain[i]
		r.BaseURL, r.APIKey, r.ownKey = s.baseURL, s.apiKey, s.ownKey
	}
	return r
}

// settingsCache keeps each shop's route for a while, so that a message costs
// no Postgres read for it. A change of a shop's settings reaches it at once
// through forget (the settings notifications); the TTL is the backstop.
type settingsCache struct {
	db  *storage.DB
	def llm.Provider
	ttl time.Duration

	mu      sync.Mutex
	m       map[string]cachedRoute
	forgets uint64 // calls of forget: a read begun before one is not cached
}

type cachedRoute struct {
	r       route
	expires time.Time
}

func newSettingsCache(db *storage.DB, def llm.Provider, ttl time.Duration) *settingsCache {
	return &settingsCache{db: db, def: def, ttl: ttl, m: map[string]cachedRoute{}}
}

// defaultRoute is the route of a shop without settings of its own.
func (c *settingsCache) defaultRoute(shop string) route {
	r := route{Provider: c.def, lang: texts.DefaultLang, limits: storage.DefaultLLMLimits(shop)}
	r.chain = chainOf(c.def.Models, r.BaseURL, r.APIKey, false)
	return r
}

func chainOf(models []string, baseURL, apiKey string, own bool) []step {
	chain := make([]step, len(models))
	for i, m := range models {
		chain[i] = step{model: m, baseURL: baseURL, apiKey: apiKey, ownKey: own}
	}
	return chain
}

// get returns shop's route: its own provider settings over the default,
// field by field, and its limits. When Postgres fails it keeps using what it
// had (or the defaults: no spend cap until the shop's limits were read).
func (c *settingsCache) get(ctx context.Context, shop string, log *slog.Logger) route {
	now := time.Now()
	c.mu.Lock()
	cached, ok := c.m[shop]
	forgets := c.forgets
	c.mu.Unlock()
	if ok && now.Before(cached.expires) {
		return cached.r
	}
	r := c.defaultRoute(shop)
	if ok {
		r = cached.r
	}
	failed := false
	s, err := c.db.ShopLLMSettings(ctx, shop)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		d := c.defaultRoute(shop)
		r.Provider, r.ownKey, r.chain, r.systemPrompt, r.temperature = d.Provider, false, d.chain, "", nil
	case err != nil:
		log.Warn("shop llm settings unavailable; using the last known or default", "err", err)
		failed = true
	default:
		c.apply(&r, s)
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
	lang, err := c.db.ShopLanguage(ctx, shop)
	switch {
	case err == nil:
		if l, ok := texts.ParseLang(lang); ok {
			r.lang = l
		}
	case !errors.Is(err, storage.ErrNotFound):
		failed = true
	}
	expires := now.Add(c.ttl)
	if failed {
		// Try again soon, not at every message.
		expires = now.Add(min(c.ttl, 5*time.Second))
	}
	c.put(shop, r, expires, forgets)
	return r
}

// apply sets r's provider and chain from the shop's settings s.
func (c *settingsCache) apply(r *route, s *storage.LLMSettings) {
	r.Provider, r.ownKey = c.def, false
	if s.BaseURL != "" {
		// Another provider: the default key is not for it.
		r.BaseURL, r.APIKey, r.ownKey = s.BaseURL, s.APIKey, true
	} else if s.APIKey != "" {
		r.APIKey, r.ownKey = s.APIKey, true
	}
	r.chain = chainOf(c.def.Models, r.BaseURL, r.APIKey, r.ownKey)
	if len(s.Chain) > 0 {
		r.chain = make([]step, len(s.Chain))
		for i, m := range s.Chain {
			st := step{model: m.Model, baseURL: r.BaseURL, apiKey: r.APIKey, ownKey: r.ownKey}
			switch {
			case m.BaseURL != "":
				// The model's own provider, with its own key (or none).
				st.baseURL, st.apiKey, st.ownKey = m.BaseURL, m.APIKey, true
			case m.APIKey != "":
				st.apiKey, st.ownKey = m.APIKey, true
			}
			r.chain[i] = st
		}
	}
	r.Models = make([]string, len(r.chain))
	for i, st := range r.chain {
		r.Models[i] = st.model
	}
	r.systemPrompt, r.temperature = s.SystemPrompt, s.Temperature
}

func (c *settingsCache) put(shop string, r route, expires time.Time, forgets uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forgets == forgets {
		c.m[shop] = cachedRoute{r: r, expires: expires}
	}
}

// forget drops shop's route (every shop's for "").
func (c *settingsCache) forget(shop string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgets++
	if shop == "" {
		clear(c.m)
		return
	}
	delete(c.m, shop)
}
