package migrations_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/peakdesk/peakdesk/migrations"
)

// Every migration goes down and up again: a release can be rolled back,
// and the migrations that build their indexes CONCURRENTLY, outside a
// transaction, apply on a database that has their earlier ones — once,
// with two migrators at it.
func TestMigrationsGoDownAndUpAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sqldb, p := migrated(t)
	latest, err := p.GetDBVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 0); err != nil {
		t.Fatalf("down: %v", err)
	}
	if v, err := p.GetDBVersion(ctx); err != nil || v != 0 {
		t.Fatalf("version after down %d, %v; want 0", v, err)
	}
	// Two migrators at once (overlapping migrate Jobs) take turns: each
	// migration runs once.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = migrations.Up(ctx, sqldb) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("up again: %v", err)
	}
	var runs, versions int
	if err := sqldb.QueryRowContext(ctx, `SELECT count(*), count(DISTINCT version_id) FROM goose_db_version
		WHERE version_id > 0 AND is_applied`).Scan(&runs, &versions); err != nil {
		t.Fatal(err)
	}
	if runs != versions {
		t.Fatalf("%d runs of %d migrations after two migrators", runs, versions)
	}
	if v, err := p.GetDBVersion(ctx); err != nil || v != latest {
		t.Fatalf("version after up %d, %v; want %d", v, err, latest)
	}
	var indexes int
	if err := sqldb.QueryRowContext(ctx, `SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE c.relname IN ('outbox_actions_unredacted', 'outbox_actions_bulk_op') AND i.indisvalid`).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	if indexes != 2 {
		t.Fatalf("%d of the concurrently built indexes are valid, want 2", indexes)
	}
}
