package main

import (
	"cmp"
	"context"
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
	if err != nil {
		return nil, nil, fmt.Errorf("bench: DATABASE_URL: %w", err)
	}
	name := "peakdesk_bench_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		return nil, nil, fmt.Errorf("bench: connect to create a scratch database: %w", err)
	}
	defer admin.Close(ctx)
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
