package storage

import (
	"context"
	"fmt"
)

// The bare-path baseline of `peakdesk bench` (issue 16): the floor of
// "pull from JetStream, one row in Postgres, ack" on this machine, so the
// end-to-end answer rate can be put beside it. Its scratch table lives only
// while the bench runs.

// BenchBare is the bare path's scratch table.
type BenchBare struct{ db *DB }

// OpenBenchBare creates the scratch table (empty); Close drops it.
func (db *DB) OpenBenchBare(ctx context.Context) (*BenchBare, error) {
	_, err := db.pool.Exec(ctx, `DROP TABLE IF EXISTS bench_bare_rows;
		CREATE TABLE bench_bare_rows (id text PRIMARY KEY, shop_id text NOT NULL, body jsonb NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now())`)
	if err != nil {
		return nil, fmt.Errorf("storage: bench bare table: %w", err)
	}
	return &BenchBare{db: db}, nil
}

// Insert writes one row for message id of shop (one round trip, its own
// transaction).
func (b *BenchBare) Insert(ctx context.Context, shop, id string, body []byte) error {
	_, err := b.db.pool.Exec(ctx, `INSERT INTO bench_bare_rows (id, shop_id, body) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO NOTHING`, id, shop, body)
	if err != nil {
		return fmt.Errorf("storage: bench bare insert: %w", err)
	}
	return nil
}

// Rows returns how many rows the table holds.
func (b *BenchBare) Rows(ctx context.Context) (int, error) {
	var n int
	if err := b.db.pool.QueryRow(ctx, `SELECT count(*) FROM bench_bare_rows`).Scan(&n); err != nil {
		return 0, fmt.Errorf("storage: bench bare rows: %w", err)
	}
	return n, nil
}

// Close drops the scratch table.
func (b *BenchBare) Close(ctx context.Context) error {
	if _, err := b.db.pool.Exec(ctx, `DROP TABLE IF EXISTS bench_bare_rows`); err != nil {
		return fmt.Errorf("storage: bench bare drop: %w", err)
	}
	return nil
}
