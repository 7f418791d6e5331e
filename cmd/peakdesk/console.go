package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/peakdesk/peakdesk/dashboard"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// startConsole runs the dashboard role on mux: the operator console and the
// operator JSON API (operators' tokens checked by auth).
func (p *Program) startConsole(ctx context.Context, mux *http.ServeMux, auth *token.Authenticator) error {
	cfg := &p.Config
	ops, err := outbox.NewOps(outbox.OpsConfig{DB: p.db, Logger: p.Log})
	if err != nil {
		return err
	}
	dlq, err := outbox.NewDLQOps(outbox.DLQOpsConfig{DB: p.db, JS: p.js, Logger: p.Log})
	if err != nil {
		return err
	}
	dashboard.RegisterAPI(mux, dashboard.APIConfig{Auth: auth, Ops: ops, DLQ: dlq, Logger: p.Log})
	if err := p.newDesk(); err != nil {
		return err
	}
	dashboard.RegisterDeskAPI(mux, dashboard.DeskAPIConfig{Auth: auth, Desk: p.desk, Logger: p.Log})
	p.console, err = dashboard.New(dashboard.Config{
		DB: p.db, Redis: p.rdb, JS: p.js, Logger: p.Log, Desk: p.desk,
		Origin:         cfg.ConsoleOrigin,
		IdleTimeout:    cfg.ConsoleIdleTimeout,
		Lifetime:       cfg.ConsoleLifetime,
		SampleInterval: cfg.ConsoleSampleInterval,
		SnapshotPrefix: cfg.SnapshotPrefix,
		// Shop administration checks URLs by the rules of the shop calls.
		AllowPrivateShopURLs: cfg.AllowPrivateShopURLs,
	})
	if err != nil {
		return err
	}
	p.console.Register(mux)
	p.console.RegisterAdminAPI(mux, auth)
	return p.console.Start(ctx)
}

// devAdminEmail is the operator dev mode creates when there is none.
const devAdminEmail = "admin@demo.local"

// devAdmin returns the console login dev mode prints: if no operator
// exists it creates admin@demo.local with a random password and keeps that
// password in the data directory (dev only), so every later `make run`
// prints the same working login.
func devAdmin(ctx context.Context, db *storage.DB, dataDir string) (email, password string, err error) {
	file := filepath.Join(dataDir, "dev-console-admin")
	if b, err := os.ReadFile(file); err == nil {
		if _, err := db.OperatorByEmail(ctx, devAdminEmail); err == nil {
			return devAdminEmail, strings.TrimSpace(string(b)), nil
		}
	}
	n, err := db.CountOperators(ctx)
	if err != nil || n > 0 {
		return "", "", err
	}
	password = dashboard.GeneratePassword()
	hash, err := dashboard.HashPassword(password)
	if err != nil {
		return "", "", err
	}
	if err := db.CreateOperator(ctx, &storage.ConsoleOperator{Email: devAdminEmail, PasswordHash: hash,
		Role: storage.RoleAdmin}, "peakdesk dev"); err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(file, []byte(password+"\n"), 0o600); err != nil {
		return "", "", err
	}
	return devAdminEmail, password, nil
}

var emailRe = regexp.MustCompile(`^[^@\s]+@[^@\s]+\.[^@\s]+$`)

// runOperator manages console operators: `operator add --email E --role R
// [--shop S] [--password-stdin]`.
func runOperator(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 || args[0] != "add" {
		fmt.Fprintln(stderr, "usage: peakdesk operator add --email E --role viewer|operator|agent|admin [--shop S] [--password-stdin]")
		return errors.New("operator: name a subcommand: add")
	}
	fs := flag.NewFlagSet("operator add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dbURL := fs.String("database-url", cmp.Or(getenv("DATABASE_URL"),
		"postgres://peakdesk:peakdesk@127.0.0.1:5432/peakdesk?sslmode=disable"), "Postgres URL (env DATABASE_URL)")
	email := fs.String("email", "", "the operator's e-mail address, their login (required)")
	role := fs.String("role", "", "viewer (looks only), operator (retries, cancels, re-drives), agent (answers customers handed to a human) or admin (required)")
	shop := fs.String("shop", "", "confine the operator to this shop; empty = every shop")
	fromStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input instead of generating one")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	e := strings.ToLower(strings.TrimSpace(*email))
	switch {
	case !emailRe.MatchString(e):
		return errors.New("operator add: --email must be an e-mail address")
	case *role != storage.RoleViewer && *role != storage.RoleOperator && *role != storage.RoleAgent && *role != storage.RoleAdmin:
		return errors.New("operator add: --role must be viewer, operator, agent or admin")
	}
	password, generated := "", false
	if *fromStdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("operator add: read password: %w", err)
		}
		password = strings.TrimRight(line, "\r\n")
		if len([]rune(password)) < dashboard.MinPasswordLen {
			return fmt.Errorf("operator add: the password must have at least %d characters", dashboard.MinPasswordLen)
		}
	} else {
		password, generated = dashboard.GeneratePassword(), true
	}
	db, err := storage.Open(ctx, *dbURL, 2)
	if err != nil {
		return err
	}
	defer db.Close()
	hash, err := dashboard.HashPassword(password)
	if err != nil {
		return err
	}
	op := &storage.ConsoleOperator{Email: e, PasswordHash: hash, Role: *role, ShopID: *shop}
	if err := db.CreateOperator(ctx, op, "peakdesk operator add"); err != nil {
		if errors.Is(err, storage.ErrOperatorExists) {
			return fmt.Errorf("operator add: %s already has an operator", e)
		}
		return fmt.Errorf("operator add: %w (does shop %q exist?)", err, *shop)
	}
	scope := "every shop"
	if *shop != "" {
		scope = "shop " + *shop
	}
	fmt.Fprintf(stdout, "operator %s added: %s of %s\n", e, *role, scope)
	if generated {
		fmt.Fprintf(stdout, "password (shown once): %s\n", password)
	}
	return nil
}
