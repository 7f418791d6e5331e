// Package storage is peakdesk's access to its persistent state: Postgres
// (pgx/v5, the one place for SQL), Redis (go-redis/v9) and the JetStream
// topology (streams and consumers), plus the embedded NATS server used by
// dev mode and tests.
package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/migrations"
)

// DB is the Postgres connection pool with peakdesk's queries.
type DB struct {
	pool *pgxpool.Pool
	// secrets seals and opens the shops' secrets (see UseSecrets).
	secrets secretsPolicy
	// succeeded is the last count of succeeded outbox actions by scope
	// (AllShops or a shop; ActionCounts, ShopActionCounts).
	succeeded succeededCounts
}

// Open connects to Postgres at url. maxConns ≤ 0 keeps pgxpool's default.
func Open(ctx context.Context, url string, maxConns int32) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("storage: parse database url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("storage: open postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("storage: ping postgres: %w", err)
	}
	return &DB{pool: pool}, nil
}

// Close closes the pool.
func (db *DB) Close() { db.pool.Close() }

// Ping checks that Postgres answers.
func (db *DB) Ping(ctx context.Context) error { return db.pool.Ping(ctx) }

// Migrate applies the embedded migrations.
func (db *DB) Migrate(ctx context.Context) error {
	sqldb := stdlib.OpenDBFromPool(db.pool)
	defer sqldb.Close()
	return migrations.Up(ctx, sqldb)
}

// MigrationsPending reports whether the database lacks a migration this
// binary carries.
func (db *DB) MigrationsPending(ctx context.Context) (bool, error) {
	sqldb := stdlib.OpenDBFromPool(db.pool)
	defer sqldb.Close()
	return migrations.Pending(ctx, sqldb)
}

// MigrationStatus lists every migration of this binary, in order, with
// whether the database has applied it (peakdesk migrate status).
func (db *DB) MigrationStatus(ctx context.Context) ([]migrations.State, error) {
	sqldb := stdlib.OpenDBFromPool(db.pool)
	defer sqldb.Close()
	return migrations.Status(ctx, sqldb)
}

// ErrNotFound is returned (often wrapped, with a message naming what was not
// found) by lookups that find no row in the caller's shop. It is a
// not_found peakdesk.Error, so callers pass it on as it is; errors.Is
// matches it through the wrapping.
var ErrNotFound = &peakdesk.Error{Code: peakdesk.ENotFound, Message: "not found"}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

func noRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
