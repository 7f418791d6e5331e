package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// runShopOrders runs the order-answer settings of a shop:
//
//	peakdesk shop order-answers --shop S [llm|direct]   show or set order_answers
//	peakdesk shop text --shop S                          list the shop's own texts
//	peakdesk shop text --shop S --lang zh --key order.update --file F   set one (validated)
//	peakdesk shop text --shop S --lang zh --key order.update --delete   back to the built-in
func runShopOrders(ctx context.Context, sub string, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("shop "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	shop := fs.String("shop", "", "shop id (required)")
	lang := fs.String("lang", "", "text: language, zh or en")
	key := fs.String("key", "", "text: which text, e.g. order.update, order.checking, orders.choose, refund.status")
	file := fs.String("file", "", "text: the template (text/template, the built-in text's fields); - reads stdin")
	del := fs.Bool("delete", false, "text: remove the shop's wording (the built-in text applies again)")
	dbURL := databaseURLFlag(fs, getenv, "Postgres `URL` (env DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *shop == "" {
		return fmt.Errorf("shop %s: --shop is required", sub)
	}
	db, err := storage.Open(ctx, *dbURL, 2)
	if err != nil {
		return fmt.Errorf("shop %s: %w", sub, err)
	}
	defer db.Close()

	if sub == "order-answers" {
		switch fs.NArg() {
		case 0:
			mode, err := db.ShopOrderAnswers(ctx, *shop)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, mode)
			return nil
		case 1:
			if err := db.SetShopOrderAnswers(ctx, *shop, fs.Arg(0)); err != nil {
				return fmt.Errorf("shop order-answers: %w", err)
			}
			fmt.Fprintf(stdout, "shop %s: order_answers = %s (every process within a few seconds)\n", *shop, fs.Arg(0))
			return nil
		}
		return errors.New("shop order-answers: give at most one of llm, direct")
	}

	switch {
	case *lang == "" && *key == "" && *file == "" && !*del:
		rows, err := db.ShopTexts(ctx, *shop)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "LANG\tKEY\tUPDATED\tTEMPLATE")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%q\n", r.Lang, r.Key, r.UpdatedAt.Format("2006-01-02 15:04"), r.Template)
		}
		return tw.Flush()
	case *del:
		ok, err := db.DeleteShopText(ctx, *shop, *lang, *key)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "shop %s: %s/%s removed: %v\n", *shop, *lang, *key, ok)
		return nil
	case *file == "":
		return errors.New("shop text: --file (or --delete) is required with --lang and --key")
	}
	var raw []byte
	if *file == "-" {
		raw, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
	} else {
		raw, err = os.ReadFile(*file)
	}
	if err != nil {
		return fmt.Errorf("shop text: %w", err)
	}
	if err := texts.Validate(texts.Lang(*lang), texts.Key(*key), string(raw)); err != nil {
		return fmt.Errorf("shop text: %w", err)
	}
	if err := db.PutShopText(ctx, storage.ShopText{ShopID: *shop, Lang: *lang, Key: *key, Template: string(raw)}); err != nil {
		return fmt.Errorf("shop text: %w", err)
	}
	fmt.Fprintf(stdout, "shop %s: %s/%s set (every process within a few seconds)\n", *shop, *lang, *key)
	return nil
}
