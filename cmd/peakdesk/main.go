// Command peakdesk is the one peakdesk binary: the service roles, dev mode,
// migrations, tokens, the simulators and the load generator.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

func main() {
	redis.SetLogger(&redisLogger{log: slog.New(slog.NewJSONHandler(os.Stderr, nil)), interval: 10 * time.Second})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "peakdesk:", err)
		os.Exit(1)
	}
}

const usage = `peakdesk keeps an AI customer-service desk answering through peak sales.

Usage: peakdesk <command> [flags]

Commands:
  dev       run every role in one process with embedded NATS and simulators
  serve     run the roles named by --roles against external services
  migrate   apply the database migrations
  token     print a signed bearer token
  shop      shop administration (shop list|show|create|set|rotate-key|encrypt-secrets)
  mockllm   serve the simulated LLM provider
  mockshop  serve the simulated shop API
  loadtest  offer load to a peakdesk URL and report what happened
  drill     orders: the order scenario with the shop API down mid-run, every role in-process
  faq       import a shop's FAQ entries (faq import --shop S FILE)
  operator  add an operator of the console (operator add --email E --role R [--shop S])
  bench     measure the performance targets side by side with their baselines
  version   print the version, commit, build date and Go version

Run "peakdesk <command> -h" for a command's flags.
`

// run dispatches a command. getenv is os.Getenv in production and a map in
// tests; nothing else reads the environment.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "dev":
		return runServe(ctx, rest, stdout, stderr, getenv, true)
	case "serve":
		return runServe(ctx, rest, stdout, stderr, getenv, false)
	case "migrate":
		return runMigrate(ctx, rest, stderr, getenv)
	case "token":
		return runToken(ctx, rest, stdout, stderr, getenv)
	case "shop":
		return runShop(ctx, rest, stdout, stderr, getenv)
	case "mockllm":
		return runMockLLM(ctx, rest, stdout)
	case "mockshop":
		return runMockShop(ctx, rest, stdout)
	case "loadtest":
		return runLoadtest(ctx, rest, stdout)
	case "drill":
		return runDrill(ctx, rest, stdout, stderr, getenv)
	case "bench":
		return runBench(ctx, rest, stdout, stderr, getenv)
	case "faq":
		return runFAQ(ctx, rest, stdout, stderr, getenv)
	case "operator":
		return runOperator(ctx, rest, os.Stdin, stdout, stderr, getenv)
	case "version", "--version":
		return runVersion(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}
