package answer

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/texts"
	"golang.org/x/sync/singleflight"
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
//
// A shop's settings are read by one call at a time (one read, in one
// transaction, however many messages of the shop arrive together): the
// others wait for that read and share its result. (They do not use an
// expired route meanwhile: a limit lowered just before must hold for all
// of them, even when only the TTL, not a notification, tells.)
type settingsCache struct {
	db  *storage.DB
	def llm.Provider
	ttl time.Duration

	mu      sync.Mutex
	m       map[string]cachedRoute
	forgets uint64 // calls of forget: a read begun before one is not cached
	// reads shares a shop's read among the calls that need it, keyed by
	// shop and forgets: a call after a forget starts a read of its own.
	reads singleflight.Group

	fetches atomic.Int64 // reads of Postgres, for tests
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
	if ok && now.Before(cached.expires) {
		c.mu.Unlock()
		return cached.r
	}
	forgets := c.forgets
	c.mu.Unlock()

	prev := c.defaultRoute(shop)
	if ok {
		prev = cached.r
	}
	ch := c.reads.DoChan(shop+"\x00"+strconv.FormatUint(forgets, 10), func() (any, error) {
		// A read that ended between this call's look at the cache and
		// here has cached a fresh route: use it, do not read again.
		c.mu.Lock()
		if cached, ok := c.m[shop]; ok && c.forgets == forgets && time.Now().Before(cached.expires) {
			c.mu.Unlock()
			return cached.r, nil
		}
		c.mu.Unlock()
		// The read serves the calls waiting for it too: the cancellation
		// of the call that started it does not end it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settingsReadTimeout)
		r, failed := c.read(rctx, shop, prev, log)
		cancel()
		expires := now.Add(c.ttl)
		if failed {
			// Try again soon, not at every message.
			expires = now.Add(min(c.ttl, 5*time.Second))
		}
		c.mu.Lock()
		if c.forgets == forgets {
			c.m[shop] = cachedRoute{r: r, expires: expires}
		}
		c.mu.Unlock()
		return r, nil
	})
	select {
	case res := <-ch:
		return res.Val.(route)
	case <-ctx.Done():
		return c.defaultRoute(shop)
	}
}

// settingsReadTimeout bounds one read of a shop's settings.
const settingsReadTimeout = 5 * time.Second

// read reads shop's route from Postgres, starting from prev (what the cache
// had, or the defaults), which it keeps should the read fail.
func (c *settingsCache) read(ctx context.Context, shop string, prev route, log *slog.Logger) (r route, failed bool) {
	r = prev
	c.fetches.Add(1)
	a, err := c.db.ShopAnswerSettings(ctx, shop)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return c.defaultRoute(shop), false
	case err != nil:
		log.Warn("shop llm settings unavailable; using the last known or default", "err", err)
		return r, true
	}
	if a.LLM == nil {
		d := c.defaultRoute(shop)
		r.Provider, r.ownKey, r.chain, r.systemPrompt, r.temperature = d.Provider, false, d.chain, "", nil
	} else {
		c.apply(&r, a.LLM)
	}
	r.limits = a.Limits
	if l, ok := texts.ParseLang(a.Language); ok {
		r.lang = l
	}
	return r, false
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
