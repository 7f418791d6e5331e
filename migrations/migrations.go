// Package migrations holds peakdesk's SQL schema migrations, embedded in the
// binary and applied with goose by `peakdesk migrate` and on `dev` start.
package migrations

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// Up applies every pending migration to db.
func Up(ctx context.Context, db *sql.DB) error {
	// Strictly in order: a database that has a migration applied refuses
	// to start when an earlier-numbered one it never ran appears (goose
	// reports it missing), so a schema is always the one the numbers say.
	// Branches that add migrations in parallel take their numbers when they
	// merge, after the last one on main.
	// Two migrators at once (overlapping migrate Jobs) take turns on a
	// Postgres advisory lock of the session: the migrations that build
	// indexes CONCURRENTLY run outside a transaction, so nothing else would
	// keep the second from building them again.
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrations: up: %w", err)
	}
	return nil
}

// Pending reports whether db lacks a migration of this binary: an init
// container waits for the migrate Job with it (deploy/k8s).
func Pending(ctx context.Context, db *sql.DB) (bool, error) {
	p, err := goose.NewProvider(goose.DialectPostgres, db, files)
	if err != nil {
		return false, fmt.Errorf("migrations: %w", err)
	}
	pending, err := p.HasPending(ctx)
	if err != nil {
		return false, fmt.Errorf("migrations: pending: %w", err)
	}
	return pending, nil
}

// Fingerprint identifies this set of migrations: a hash of every file's name
// and content. Tests name their migrated template database after it.
func Fingerprint() string {
	h := sha256.New()
	names, _ := fs.Glob(files, "*.sql")
	for _, name := range names {
		b, _ := files.ReadFile(name)
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// State is one migration of this binary and whether db has it.
type State struct {
	Version   int64
	Name      string // file name, e.g. 00001_init.sql
	Applied   bool
	AppliedAt time.Time // zero when pending
}

// Status lists every migration of this binary, in order, with whether db
// has applied it.
func Status(ctx context.Context, db *sql.DB) ([]State, error) {
	p, err := goose.NewProvider(goose.DialectPostgres, db, files)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	results, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrations: status: %w", err)
	}
	states := make([]State, 0, len(results))
	for _, r := range results {
		states = append(states, State{
			Version:   r.Source.Version,
			Name:      filepath.Base(r.Source.Path),
			Applied:   r.State == goose.StateApplied,
			AppliedAt: r.AppliedAt,
		})
	}
	return states, nil
}
