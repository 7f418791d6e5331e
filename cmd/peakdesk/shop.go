package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/shopadmin"
	"github.com/peakdesk/peakdesk/storage"
)

const shopUsage = `Usage: peakdesk shop <subcommand> [flags] [field=value ...]

  list                                   the shops
  show --shop S                          a shop's settings as JSON (secrets masked)
  create --shop S [--name N] [field=value ...]
                                         a new shop; prints it, and its generated
                                         webhook secret once
  set --shop S field=value ...           change settings; prints the shop
  rotate-key --shop S [--overlap 24h] [--show-secret]
                                         a new token-signing key; prints its kid
  encrypt-secrets                        seal every shop secret not yet sealed
                                         under PEAKDESK_MASTER_KEY (start does it too)
  order-answers --shop S [llm|direct]    show or set how order questions are answered
                                         (direct: from the shop's data, without the LLM)
  text --shop S [--lang zh|en --key K (--file F | --delete)]
                                         list, set or remove the shop's wording of a
                                         customer text (order.update, order.checking, ...)
  origins --shop S [--set https://a.example,https://b.example]
                                         web origins whose pages may use the chat
                                         widget and API (CORS)

Fields are the JSON paths of "show", e.g. language=en limits.rate_per_second=50
webhook.url=https://shop.example/hooks admission.max_wait_p2=20s handoff.sla=5m
handoff.keywords='["找店长"]' order_answers=direct
llm.chain='[{"model":"qwen-max","base_url":"https://a.example/v1"},{"model":"deepseek-chat","base_url":"https://b.example/v1"}]'
money.coupon_max_cents=null. A value that parses as JSON (a number, true,
null, [...], {...}, "quoted") is that; anything else is a string; @FILE reads
the value from a file and @- from standard input (use it for secrets:
llm.api_key=@- shop_api.secret=@key.txt), so they stay out of the shell's
history. null puts a setting back to its default.

The master key comes from PEAKDESK_MASTER_KEY (unset: the dev-only key).
Every change is written to the audit log.
`

// runShop dispatches `peakdesk shop <subcommand>`.
func runShop(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, shopUsage)
		return errors.New("shop: no subcommand given")
	}
	switch args[0] {
	case "list", "show", "create", "set", "encrypt-secrets":
		return runShopAdmin(ctx, args[0], args[1:], os.Stdin, stdout, stderr, getenv)
	case "rotate-key":
		return runShopRotateKey(ctx, args[1:], stdout, stderr, getenv)
	case "origins":
		return runShopOrigins(ctx, args[1:], stdout, stderr, getenv)
	case "order-answers", "text": // shop_orders.go
		return runShopOrders(ctx, args[0], args[1:], stdout, stderr, getenv)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, shopUsage)
		return nil
	default:
		fmt.Fprint(stderr, shopUsage)
		return fmt.Errorf("shop: unknown subcommand %q", args[0])
	}
}

// cliOperator is who the audit log names for a command: the local user.
func cliOperator(getenv func(string) string) shopadmin.Operator {
	return shopadmin.Operator{ID: "cli:" + cmp.Or(getenv("USER"), "unknown"), Shop: storage.AllShops}
}

// openAdmin opens the database with the master key and the shop admin.
func openAdmin(ctx context.Context, dbURL string, getenv func(string) string, stderr io.Writer) (*shopadmin.Admin, *storage.DB, error) {
	db, err := openSecretsDB(ctx, dbURL, getenv, stderr)
	if err != nil {
		return nil, nil, err
	}
	allowPrivate := strings.EqualFold(strings.TrimSpace(getenv("PEAKDESK_ALLOW_PRIVATE_SHOP_URLS")), "true")
	admin, err := shopadmin.New(shopadmin.Config{DB: db, AllowPrivateURLs: allowPrivate})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return admin, db, nil
}

func runShopAdmin(ctx context.Context, sub string, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("shop "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, shopUsage); fs.PrintDefaults() }
	shop := fs.String("shop", "", "shop id")
	name := fs.String("name", "", "the new shop's name (create; default its id)")
	dbURL := databaseURLFlag(fs, getenv, "Postgres `URL` (env DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	needShop := sub == "show" || sub == "create" || sub == "set"
	switch {
	case needShop && *shop == "":
		return fmt.Errorf("shop %s: --shop is required", sub)
	case (sub == "list" || sub == "show" || sub == "encrypt-secrets") && fs.NArg() > 0:
		return fmt.Errorf("shop %s: unexpected argument %q", sub, fs.Arg(0))
	case sub == "set" && fs.NArg() == 0:
		return errors.New("shop set: name at least one field=value")
	}
	var patch shopadmin.Patch
	if fs.NArg() > 0 {
		data, err := patchJSON(fs.Args(), stdin)
		if err != nil {
			return fmt.Errorf("shop %s: %w", sub, err)
		}
		if patch, err = shopadmin.DecodePatch(data); err != nil {
			return fmt.Errorf("shop %s: %s", sub, peakdesk.ErrorMessage(err))
		}
	}
	admin, db, err := openAdmin(ctx, *dbURL, getenv, stderr)
	if err != nil {
		return fmt.Errorf("shop %s: %w", sub, err)
	}
	defer db.Close()
	who := cliOperator(getenv)

	var out any
	switch sub {
	case "list":
		var all []storage.ShopSummary
		for after := ""; ; {
			page, err := admin.List(ctx, who, after, 500)
			if err != nil {
				return fmt.Errorf("shop list: %w", err)
			}
			all = append(all, page...)
			if len(page) < 500 {
				break
			}
			after = page[len(page)-1].ID
		}
		for _, s := range all {
			fmt.Fprintf(stdout, "%s\t%s\t%s\t%s\n", s.ID, s.Language, s.Currency, s.Name)
		}
		return nil
	case "show":
		out, err = admin.Get(ctx, who, *shop)
	case "create":
		out, err = admin.Create(ctx, who, *shop, *name, patch)
	case "set":
		out, err = admin.Update(ctx, who, *shop, patch)
	case "encrypt-secrets":
		n, err := db.SealSecrets(ctx)
		if err != nil {
			return fmt.Errorf("shop encrypt-secrets: %w", err)
		}
		fmt.Fprintf(stdout, "%d secrets sealed\n", n)
		return nil
	}
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("shop %s: shop %q does not exist", sub, *shop)
		}
		return fmt.Errorf("shop %s: %s", sub, cmp.Or(peakdesk.ErrorMessage(err), err.Error()))
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(out)
}

// patchJSON turns field=value arguments into a patch's JSON object.
func patchJSON(args []string, stdin io.Reader) ([]byte, error) {
	root := map[string]any{}
	stdinUsed := false
	for _, arg := range args {
		path, raw, ok := strings.Cut(arg, "=")
		if !ok || path == "" {
			return nil, fmt.Errorf("%q: want field=value", arg)
		}
		var value any
		switch {
		case raw == "@-":
			if stdinUsed {
				return nil, errors.New("only one value can come from standard input")
			}
			stdinUsed = true
			line, err := bufio.NewReader(stdin).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%s: read standard input: %w", path, err)
			}
			value = strings.TrimRight(line, "\r\n")
		case strings.HasPrefix(raw, "@"):
			b, err := os.ReadFile(raw[1:])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			value = strings.TrimRight(string(b), "\r\n")
		default:
			if err := json.Unmarshal([]byte(raw), &value); err != nil {
				value = raw
			}
		}
		parts := strings.Split(path, ".")
		m := root
		for _, p := range parts[:len(parts)-1] {
			next, ok := m[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[p] = next
			}
			m = next
		}
		m[parts[len(parts)-1]] = value
	}
	return json.Marshal(root)
}

// runShopRotateKey gives a shop a new token-signing key and prints its kid
// (a shop without keys gets its first); the old keys stay valid for the
// overlap. The secret is printed only with --show-secret: the shop's
// backend needs it to mint its customers' tokens, and it should go straight
// into the shop's secret store.
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
	admin, db, err := openAdmin(ctx, *dbURL, getenv, stderr)
	if err != nil {
		return fmt.Errorf("shop rotate-key: %w", err)
	}
	defer db.Close()
	key, err := admin.RotateKey(ctx, cliOperator(getenv), *shop, *overlap)
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
