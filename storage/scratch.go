package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// scratchPrefix is what a scratch database's name may start with.
var scratchPrefix = regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)

// ScratchDatabase creates a migrated database of its own on the Postgres
// server of serverURL (whose role needs CREATEDB), named prefix plus a
// random suffix, and returns its URL and a drop func that removes it. A
// drill works in one: the relays of other processes on the same database
// would otherwise claim its outbox actions. Drop is idempotent.
func ScratchDatabase(ctx context.Context, serverURL, prefix string) (scratchURL string, drop func(context.Context) error, err error) {
	if !scratchPrefix.MatchString(prefix) {
		return "", nil, fmt.Errorf("storage: scratch database prefix %q: lower-case letters, digits and _", prefix)
	}
	u, err := url.Parse(serverURL)
	if err != nil || u.Scheme == "" {
		return "", nil, errors.New("storage: scratch database: the database URL must be a URL (postgres://…)")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := prefix + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", nil, fmt.Errorf("storage: scratch database: %w", err)
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	_ = conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return "", nil, fmt.Errorf("storage: create scratch database: %w", err)
	}
	dropped := false
	drop = func(ctx context.Context) error {
		if dropped {
			return nil
		}
		conn, err := pgx.Connect(ctx, serverURL)
		if err != nil {
			return fmt.Errorf("storage: drop scratch database %s: %w", name, err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		// WITH (FORCE) fails with insufficient_privilege while an
		// autovacuum worker is in the database, which passes within moments.
		for attempt := 1; ; attempt++ {
			_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
				dropped = true
				return nil
			case errors.As(err, &pgErr) && pgErr.Code == "42501" && attempt < 50 && ctx.Err() == nil:
				time.Sleep(100 * time.Millisecond)
			default:
				return fmt.Errorf("storage: drop scratch database %s: %w", name, err)
			}
		}
	}
	u.Path = "/" + name
	db, err := Open(ctx, u.String(), 2)
	if err == nil {
		err = db.Migrate(ctx)
		db.Close()
	}
	if err != nil {
		return "", nil, errors.Join(fmt.Errorf("storage: scratch database: %w", err), drop(context.WithoutCancel(ctx)))
	}
	return u.String(), drop, nil
}
