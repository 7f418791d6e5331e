package main

import (
	"context"

	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// newDesk makes the process's one Desk (human takeover's agent
// operations), shared by the edge's agent API and the console's inbox.
func (p *Program) newDesk() error {
	var err error
	p.desk, err = outbox.NewDesk(outbox.DeskConfig{DB: p.db, JS: p.js,
		Memory: &storage.Memory{DB: p.db, Redis: p.rdb}, Logger: p.Log, Registerer: p.registry})
	return err
}

// startWaitNotifier tells customers who wait for an agent past their
// shop's handoff_sla the expected wait (every relay runs it; they share the
// work).
func (p *Program) startWaitNotifier(ctx context.Context) error {
	var err error
	if p.waits, err = outbox.NewWaitNotifier(outbox.WaitNotifierConfig{DB: p.db, JS: p.js, Logger: p.Log,
		Registerer: p.registry}); err != nil {
		return err
	}
	return p.waits.Start(ctx)
}
