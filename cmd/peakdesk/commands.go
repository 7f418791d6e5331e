package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// runServe runs `dev` or `serve` until ctx is cancelled.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, dev bool) error {
	name := map[bool]string{true: "dev", false: "serve"}[dev]
	cfg, err := parseFlags(name, args, stderr, getenv, dev)
	if err != nil {
		return err
	}
	p := NewProgram(cfg, stderr)
	if err := p.Start(ctx); err != nil {
		return err
	}
	defer p.Stop()
	if dev {
		var console strings.Builder
		if p.console != nil {
			email, password, err := devAdmin(ctx, p.db, cfg.DataDir)
			if err != nil {
				return err
			}
			printConsoleBanner(&console, p.Addr(), email, password)
		}
		printDevBanner(stdout, p.Addr(), cmp.Or(cfg.JWTSecret, devSecret), console.String())
	}
	return p.Wait(ctx)
}

func printDevBanner(w io.Writer, addr, secret, console string) {
	tok, err := token.Sign([]byte(secret), "demo", "alice", []string{token.ScopeUrgent}, 24*time.Hour)
	if err != nil {
		fmt.Fprintln(w, "could not mint a dev token:", err)
		return
	}
	fmt.Fprintf(w, `
peakdesk dev is up on http://%[1]s (shop "demo", user "alice"; token valid 24 h)

  export TOKEN=%[2]s
  curl -s -X POST 'http://%[1]s/v1/messages?wait=5s' -H "Authorization: Bearer $TOKEN" \
       -H 'Content-Type: application/json' -d '{"text":"双11满减怎么算？"}'

Or chat in your browser: http://%[1]s/demo  (a pretend shop page with the chat widget, signed in as
customer %[4]s, who owns order %[5]s: ask about 双11满减, the order, a refund)

%[3]sPress Ctrl-C to stop.
`, addr, tok, console, demoCustomer, demoOrder)
}

func printConsoleBanner(w io.Writer, addr, email, password string) {
	fmt.Fprintf(w, "Operator console: http://%s/console/\n", addr)
	switch {
	case password != "":
		fmt.Fprintf(w, "  log in as %s with password %s (dev only; kept in the data directory)\n", email, password)
	default:
		fmt.Fprintln(w, "  log in with an operator you added (peakdesk operator add --email … --role admin)")
	}
	fmt.Fprintln(w)
}

// runMigrate applies the SQL migrations and, when NATS_URL is set, creates
// or updates the JetStream streams and consumers (with the NATS user that
// may: deploy/k8s's admin user). With --wait it applies nothing and waits
// until the database has every migration of this binary: the init
// container of each role in deploy/k8s, so no pod of a new version starts
// against an old schema while the migrate Job runs.
func runMigrate(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dbURL := databaseURLFlag(fs, getenv, "Postgres `URL` (env DATABASE_URL)")
	shop := fs.String("ensure-shop", "", "also create this shop id if missing (e.g. demo)")
	cfg := envDefaults(getenv, false)
	cfg.Roles = []string{"migrate"} // names the NATS connection
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "also create or update the JetStream streams and consumers on this NATS (env NATS_URL; credentials NATS_CREDS, NATS_CA, replicas PEAKDESK_STREAM_REPLICAS)")
	wait := fs.Duration("wait", 0, "apply nothing: wait up to this long until the database has every migration of this binary")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.envErr != nil {
		return cfg.envErr
	}
	db, err := storage.Open(ctx, *dbURL, 2)
	if err != nil {
		return err
	}
	defer db.Close()
	if *wait > 0 {
		return waitForSchema(ctx, db, *wait, stderr)
	}
	if err := db.Migrate(ctx); err != nil {
		return err
	}
	if *shop != "" {
		if err := db.EnsureShop(ctx, *shop, *shop); err != nil {
			return err
		}
	}
	u, _ := url.Parse(*dbURL)
	if u != nil {
		u.User = nil
		fmt.Fprintln(stderr, "migrations applied to", u.Redacted())
	}
	if cfg.NATSURL == "" {
		return nil
	}
	nc, err := queue.Connect(cfg.natsConnect("_INBOX.admin"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	topo, err := queue.EnsureTopology(ctx, js, queue.Topology{AckWait: cfg.AckWait, AckWaitP0: cfg.AckWaitP0, Replicas: cfg.StreamReplicas})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "JetStream streams and consumers ready (replicas %d, ack wait %s)\n", topo.Replicas, topo.AckWait)
	return nil
}

// waitForSchema polls until the database has every migration of this
// binary, or fails after limit.
func waitForSchema(ctx context.Context, db *storage.DB, limit time.Duration, stderr io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		pending, err := db.MigrationsPending(ctx)
		if err == nil && !pending {
			fmt.Fprintln(stderr, "schema is current")
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migrate --wait: the schema is not current after %s (pending %v, last error %v); is the migrate Job running?", limit, pending, err)
		case <-time.After(2 * time.Second):
		}
	}
}

// runToken prints a bearer token. A shop's token is signed with the shop's
// current key from the database (its first key is created if it has none)
// and names it by kid; --platform, an operator scope or shop "*" sign with
// the platform key PEAKDESK_JWT_SECRET instead.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	shop := fs.String("shop", "demo", "shop (tenant) id; * for a platform operator")
	sub := fs.String("sub", "", "subject: end-user id, service or operator name (required)")
	scope := fs.String("scope", "", "space- or comma-separated scopes, e.g. priority:urgent, service, ops, ops:write")
	ttl := fs.Duration("ttl", 24*time.Hour, "validity")
	platform := fs.Bool("platform", false, "sign with the platform key PEAKDESK_JWT_SECRET, not the shop's key")
	dbURL := databaseURLFlag(fs, getenv, "Postgres `URL`, for the shop's key (env DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sub == "" {
		return fmt.Errorf("token: --sub is required")
	}
	scopes := strings.FieldsFunc(*scope, func(r rune) bool { return r == ' ' || r == ',' })
	if *platform || *shop == "*" || slices.ContainsFunc(scopes, token.IsOperatorScope) {
		secret := getenv("PEAKDESK_JWT_SECRET")
		if secret == "" {
			fmt.Fprintln(stderr, "token: PEAKDESK_JWT_SECRET is unset; signing with the dev-only secret")
			secret = devSecret
		}
		tok, err := token.Sign([]byte(secret), *shop, *sub, scopes, *ttl)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		return nil
	}
	// Shop keys are sealed at rest: the master key opens them.
	db, err := openSecretsDB(ctx, *dbURL, getenv, stderr)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	defer db.Close()
	key, err := token.ShopSigningKey(ctx, db, *shop)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("token: shop %q does not exist", *shop)
	}
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	tok, err := token.SignWithShopKey(key, *sub, scopes, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
