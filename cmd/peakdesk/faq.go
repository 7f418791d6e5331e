package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/faq"
)

const faqUsage = `Usage: peakdesk faq import --shop S [--replace] FILE

Imports FAQ entries into shop S from FILE: CSV (question,answer[,tags], tags
separated by | or ;, optional header row) or JSON (an array of
{"question", "answer", "tags"?}). A question already in the shop's FAQ gets
the new answer; --replace also deletes the entries FILE does not have.
Workers and ingest nodes pick the change up within seconds.
`

// runFAQ runs `peakdesk faq SUBCOMMAND`.
func runFAQ(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 || args[0] != "import" {
		fmt.Fprint(stderr, faqUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return errors.New("faq: want the subcommand import")
	}
	fs := flag.NewFlagSet("faq import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, faqUsage); fs.PrintDefaults() }
	// The default is resolved after parsing, so -h never prints a password.
	dbURL := fs.String("database-url", "", "Postgres URL (default $DATABASE_URL, else the local dev database)")
	shop := fs.String("shop", "", "shop id (required)")
	replace := fs.Bool("replace", false, "delete the shop's entries that FILE does not have")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *shop == "" || fs.NArg() != 1 {
		fs.Usage()
		return errors.New("faq import: --shop and exactly one FILE are required")
	}
	*dbURL = cmp.Or(*dbURL, getenv("DATABASE_URL"), "postgres://peakdesk:peakdesk@127.0.0.1:5432/peakdesk?sslmode=disable")
	name := fs.Arg(0)
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("faq import: %w", err)
	}
	defer f.Close()
	entries, err := faq.Parse(name, f)
	if err != nil {
		return err
	}
	db, err := storage.Open(ctx, *dbURL, 2)
	if err != nil {
		return err
	}
	defer db.Close()
	res, err := db.ImportFAQ(ctx, *shop, entries, *replace)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("faq import: shop %q does not exist (create it with: peakdesk migrate --ensure-shop %s)", *shop, *shop)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "shop %s: %d entries read, %d added, %d updated, %d unchanged, %d deleted\n",
		*shop, len(entries), res.Inserted, res.Updated, res.Unchanged, res.Deleted)
	return nil
}
