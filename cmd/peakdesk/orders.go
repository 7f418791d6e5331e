package main

import (
	"context"

	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// orderAnswers is what answers order questions from the shops' data in
// this process (issue 15): the coalesced, cached lookups, the shops' own
// wording of the customer texts, and the tools the workers offer the LLM
// and the edge sheds order questions to.
type orderAnswers struct {
	lookups *outbox.Lookups
	texts   *texts.Library
	tools   *outbox.Tools
}

func (p *Program) newOrderAnswers() (*orderAnswers, error) {
	cfg := &p.Config
	lookups, err := outbox.NewLookups(outbox.LookupsConfig{Shop: p.shop, Redis: p.rdb, CacheTTL: cfg.OrderCacheTTL,
		Registerer: p.registry})
	if err != nil {
		return nil, err
	}
	lib := texts.NewLibrary(func(ctx context.Context, shop string) ([]texts.Override, error) {
		rows, err := p.db.ShopTexts(ctx, shop)
		out := make([]texts.Override, len(rows))
		for i, r := range rows {
			out[i] = texts.Override{Lang: texts.Lang(r.Lang), Key: texts.Key(r.Key), Template: r.Template}
		}
		return out, err
	}, 0, p.Log)
	tools, err := outbox.NewTools(outbox.ToolsConfig{DB: p.db, Shop: p.shop, Lookups: lookups, Texts: lib,
		LookupBudget: cfg.OrderLookupBudget, FollowUpMaxAttempts: cfg.FollowUpMaxAttempts, Registerer: p.registry})
	if err != nil {
		return nil, err
	}
	return &orderAnswers{lookups: lookups, texts: lib, tools: tools}, nil
}
