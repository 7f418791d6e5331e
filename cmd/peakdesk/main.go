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

// run dispatches a command. getenv is os.Getenv in production and a map in
// tests; nothing else reads the environment.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, topUsage())
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "dev":
		return runServe(ctx, rest, stdout, stderr, getenv, true)
	case "serve":
		return runServe(ctx, rest, stdout, stderr, getenv, false)
	case "migrate":
		return runMigrate(ctx, rest, stdout, stderr, getenv)
	case "token":
		return runToken(ctx, rest, stdout, stderr, getenv)
	case "shop":
		return runShop(ctx, rest, stdout, stderr, getenv)
	case "mockllm":
		return runMockLLM(ctx, rest, stdout, stderr)
	case "mockshop":
		return runMockShop(ctx, rest, stdout, stderr)
	case "loadtest":
		return runLoadtest(ctx, rest, stdout, stderr, getenv)
	case "drill":
		return runDrill(ctx, rest, stdout, stderr, getenv)
	case "bench":
		return runBench(ctx, rest, stdout, stderr, getenv)
	case "faq":
		return runFAQ(ctx, rest, stdout, stderr, getenv)
	case "operator":
		return runOperator(ctx, rest, os.Stdin, stdout, stderr, getenv)
	case "version", "--version":
		if len(rest) > 0 {
			fmt.Fprint(stderr, commandHeader("version"))
			if isHelpArg(rest[0]) {
				return flag.ErrHelp
			}
			return fmt.Errorf("version: unexpected arguments %q", rest)
		}
		return runVersion(stdout)
	case "help", "-h", "--help":
		dispatch := func(args []string, stdout, stderr io.Writer) error {
			return run(ctx, args, stdout, stderr, getenv)
		}
		err := runHelp(dispatch, rest, stdout)
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	default:
		fmt.Fprint(stderr, topUsage())
		return fmt.Errorf("unknown command %q", cmd)
	}
}
