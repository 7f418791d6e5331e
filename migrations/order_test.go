package migrations_test

import (
	"context"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/migrations"
)

// Migrations apply strictly in order: a database that ran a later migration
// but not an earlier one (a branch merged with a number below main's last)
// is refused, not patched out of order.
func TestMigrationsApplyInStrictOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sqldb, p := migrated(t)
	// As if 00011 were new, below versions the database already ran.
	if _, err := p.ApplyVersion(ctx, 11, false); err != nil {
		t.Fatal(err)
	}
	err := migrations.Up(ctx, sqldb)
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Up over a missing earlier migration: %v, want it refused", err)
	}
	var applied bool
	if err := sqldb.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'shops' AND column_name = 'retention_days')`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied {
		t.Fatal("the missing migration was applied out of order")
	}
}
