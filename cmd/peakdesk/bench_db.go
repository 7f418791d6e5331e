package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// benchDatabase creates a scratch database beside the one DATABASE_URL
// names, for one bench run, and returns a getenv that points DATABASE_URL
// at it and a function that drops it. The bench measures the pipeline as
// it runs on a database whose outbox and message tables hold what
// retention keeps, not whatever a long-lived dev database has collected:
// with a quarter of a million rows left by earlier runs, the relay's
// updates and the outbox metrics' counts cost several times what they
// cost on a fresh table, and the figures would measure the dev database.
// The role must be allowed to create databases (the local one is: the
// tests make theirs the same way).
func benchDatabase(ctx context.Context, getenv func(string) string, logw io.Writer) (func(string) string, func(), error) {
	base := cmp.Or(getenv("DATABASE_URL"), defaultDatabaseURL)
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, nil, errors.New("bench: DATABASE_URL must be a postgres:// URL (the bench makes a scratch database beside the one it names)")
	}
	now := time.Now()
	name := benchDBPrefix + strconv.FormatInt(now.UnixNano(), 36)
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		return nil, nil, fmt.Errorf("bench: connect to create a scratch database: %w", err)
	}
	defer admin.Close(ctx)
	dropStaleBenchDatabases(ctx, admin, now, logw)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, nil, fmt.Errorf("bench: create the scratch database (the role needs CREATEDB): %w", err)
	}
	fmt.Fprintf(logw, "bench: scratch database %s (dropped at the end)\n", name)
	u.Path = "/" + name
	scratch := u.String()
	env := func(k string) string {
		if k == "DATABASE_URL" {
			return scratch
		}
		return getenv(k)
	}
	drop := func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			fmt.Fprintf(logw, "bench: drop scratch database %s: %v\n", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil &&
			!strings.Contains(err.Error(), "does not exist") {
			fmt.Fprintf(logw, "bench: drop scratch database %s: %v\n", name, err)
		}
	}
	return env, drop, nil
}

const benchDBPrefix = "peakdesk_bench_"

// dropStaleBenchDatabases drops the scratch databases of bench runs that
// began more than six hours ago (their name holds their start) and never
// dropped theirs: a run killed with SIGKILL.
func dropStaleBenchDatabases(ctx context.Context, c *pgx.Conn, now time.Time, logw io.Writer) {
	rows, err := c.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'peakdesk\_bench\_%'`)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, n := range names {
		ns, err := strconv.ParseInt(strings.TrimPrefix(n, benchDBPrefix), 36, 64)
		if err != nil || now.Sub(time.Unix(0, ns)) < 6*time.Hour {
			continue
		}
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize()+" WITH (FORCE)"); err == nil {
			fmt.Fprintf(logw, "bench: dropped %s, left by an earlier run\n", n)
		}
	}
}
