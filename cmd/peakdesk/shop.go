package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage"
)

// runShop dispatches `peakdesk shop <subcommand>`.
func runShop(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	const usage = "usage: peakdesk shop rotate-key --shop S [--overlap 24h] [--show-secret]\n" +
		"       peakdesk shop origins --shop S [--set https://a.example,https://b.example]"
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errors.New("shop: no subcommand given")
	}
	switch args[0] {
	case "rotate-key":
		return runShopRotateKey(ctx, args[1:], stdout, stderr, getenv)
	case "origins":
		return runShopOrigins(ctx, args[1:], stdout, stderr, getenv)
	default:
		fmt.Fprintln(stderr, usage)
		return fmt.Errorf("shop: unknown subcommand %q", args[0])
	}
}

// runShopRotateKey gives a shop a new token-signing key and prints its kid
// (a shop without keys gets its first);
// the old keys stay valid for the overlap. The secret is printed only with
// --show-secret: the shop's backend needs it to mint its customers' tokens,
// and it should go straight into the shop's secret store.
func runShopRotateKey(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("shop rotate-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	shop := fs.String("shop", "", "shop id (required)")
	overlap := fs.Duration("overlap", 24*time.Hour, "how long tokens signed with the shop's older keys stay valid; 0 revokes them at once")
	showSecret := fs.Bool("show-secret", false, "also print the new key's secret (for the shop's backend, which mints tokens with it)")
	dbURL := databaseURLFlag(fs, getenv, "Postgres `URL` (env DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *shop == "":
		return errors.New("shop rotate-key: --shop is required")
	case *overlap < 0:
		return errors.New("shop rotate-key: --overlap must not be negative")
	case fs.NArg() > 0:
		return fmt.Errorf("shop rotate-key: unexpected argument %q", fs.Arg(0))
	}
	db, err := storage.Open(ctx, *dbURL, 2)
	if err != nil {
		return fmt.Errorf("shop rotate-key: %w", err)
	}
	defer db.Close()
	key, err := token.RotateShopKey(ctx, db, *shop, *overlap)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("shop rotate-key: shop %q does not exist", *shop)
	}
	if err != nil {
		return fmt.Errorf("shop rotate-key: %w", err)
	}
	// stdout: the kid, then with --show-secret the secret, one a line.
	fmt.Fprintln(stdout, key.KID)
	if *showSecret {
		fmt.Fprintln(stdout, key.Secret)
	}
	fmt.Fprintf(stderr, "shop %s: new signing key %s; older keys expire in %s\n", *shop, key.KID, *overlap)
	return nil
}

// runShopOrigins prints, or with --set replaces, the web origins whose
// pages may call the chat API for a shop from a browser (CORS; the chat
// widget on the shop's own site). --set "" allows none.
func runShopOrigins(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("shop origins", flag.ContinueOnError)
	fs.SetOutput(stderr)
	shop := fs.String("shop", "", "shop id (required)")
	set := fs.String("set", "", "comma-separated origins to allow, replacing the current ones, e.g. https://shop.example.com")
	dbURL := databaseURLFlag(fs, getenv, "Postgres `URL` (env DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *shop == "":
		return errors.New("shop origins: --shop is required")
	case fs.NArg() > 0:
		return fmt.Errorf("shop origins: unexpected argument %q", fs.Arg(0))
	}
	replace := false
	fs.Visit(func(f *flag.Flag) { replace = replace || f.Name == "set" })
	origins := []string{}
	for o := range strings.SplitSeq(*set, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		n, err := peakdesk.NormalizeOrigin(o)
		if err != nil {
			return fmt.Errorf("shop origins: --set: %w", err)
		}
		origins = append(origins, n)
	}
	db, err := storage.Open(ctx, *dbURL, 2)
	if err != nil {
		return fmt.Errorf("shop origins: %w", err)
	}
	defer db.Close()
	if replace {
		if err := db.SetShopAllowedOrigins(ctx, *shop, origins); errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("shop origins: shop %q does not exist", *shop)
		} else if err != nil {
			return fmt.Errorf("shop origins: %w", err)
		}
	}
	s, err := db.ShopSettings(ctx, *shop)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("shop origins: shop %q does not exist", *shop)
	} else if err != nil {
		return fmt.Errorf("shop origins: %w", err)
	}
	for _, o := range s.AllowedOrigins {
		fmt.Fprintln(stdout, o)
	}
	return nil
}
