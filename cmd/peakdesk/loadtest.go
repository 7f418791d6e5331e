package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/peakdesk/peakdesk/loadtest"
)

// loadtestDevSecret is the secret `peakdesk dev` falls back to; it lets the
// load test drive a dev instance without any configuration.
const loadtestDevSecret = "peakdesk-dev-secret-do-not-use-in-production"

// runLoadtest runs `peakdesk loadtest`: it offers load to a running peakdesk,
// prints the report, optionally writes it as JSON and HTML, and fails when
// any accepted message was lost or answered twice.
func runLoadtest(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var (
		baseURL       = fs.String("url", "http://127.0.0.1:8080", "base URL of the peakdesk ingest edge")
		secret        = fs.String("secret", "", "JWT secret of the target (default $PEAKDESK_JWT_SECRET, else the dev secret)")
		shop          = fs.String("shop", "demo", "shop id the tokens name")
		scenario      = fs.String("scenario", "steady", "load shape: steady, burst or ramp; push: idle event streams, live delivery and a reconnect storm")
		rate          = fs.Float64("rate", 100, "messages per second (steady; start rate of ramp)")
		rateEnd       = fs.Float64("rate-end", 0, "end rate of ramp (default 5 × --rate)")
		duration      = fs.Duration("duration", 10*time.Second, "how long steady and ramp offer load")
		messages      = fs.Int("messages", 1000, "messages offered by burst")
		within        = fs.Duration("within", 5*time.Second, "window burst spreads its messages over")
		concurrency   = fs.Int("concurrency", 256, "cap on in-flight POST requests")
		conversations = fs.Int("conversations", 100, "conversations (one user each) the messages are spread over")
		mixFlag       = fs.String("mix", "none", "priority hint weights, e.g. p0=1,p1=3,p2=6; none = let the server classify")
		follow        = fs.String("follow", "sse", "how answers are followed: sse or poll")
		deadline      = fs.Duration("deadline", 60*time.Second, "how long to wait for answers after the last offer")
		linger        = fs.Duration("linger", time.Second, "how long SSE streams stay open after the last answer, to catch duplicates")
		timeout       = fs.Duration("request-timeout", 30*time.Second, "timeout of one POST or GET")
		jsonPath      = fs.String("json", "", "write the report as JSON to this file")
		htmlPath      = fs.String("html", "", "write the report as a self-contained HTML page to this file")
		seed          = fs.Int64("seed", 1, "random seed for questions, hints and conversation choice")
		verbose       = fs.Bool("v", false, "log progress to stderr")
		streams       = fs.Int("streams", 1000, "push: customers holding an event stream open")
		replies       = fs.Int("replies", 0, "push: replies delivered while every stream is open (default min(streams, 200))")
		storm         = fs.Int("storm", 0, "push: customers that drop and reconnect at once (default streams/2)")
		stormReplies  = fs.Int("storm-replies", 0, "push: replies the storm's customers miss while away (default min(storm, 200))")
		metricsURL    = fs.String("metrics-url", "", "push: the edge's /metrics URL, to measure its memory per idle stream")
	)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("loadtest: unexpected arguments %q", fs.Args())
	}
	mix, err := loadtest.ParseLoadMix(*mixFlag)
	if err != nil {
		return fmt.Errorf("loadtest: --mix: %w", err)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *scenario == "push" {
		rep, runErr := loadtest.RunPush(ctx, loadtest.PushConfig{
			BaseURL: *baseURL, Secret: []byte(cmp.Or(*secret, os.Getenv("PEAKDESK_JWT_SECRET"), loadtestDevSecret)),
			Shop: *shop, Streams: *streams, Replies: *replies, Storm: *storm, StormReplies: *stormReplies,
			Concurrency: min(*concurrency, 64), MetricsURL: *metricsURL, Deadline: *deadline, Logger: logger,
		})
		if rep == nil {
			return fmt.Errorf("loadtest: %w", runErr)
		}
		errs := []error{runErr, rep.WriteText(stdout)}
		if *jsonPath != "" {
			errs = append(errs, loadtestWriteFile(*jsonPath, rep.WriteJSON))
		}
		errs = append(errs, rep.Check())
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("loadtest: %w", err)
		}
		return nil
	}

	rep, runErr := loadtest.RunLoad(ctx, loadtest.LoadConfig{
		BaseURL:        *baseURL,
		Secret:         []byte(cmp.Or(*secret, os.Getenv("PEAKDESK_JWT_SECRET"), loadtestDevSecret)),
		Shop:           *shop,
		Scenario:       loadtest.Scenario(*scenario),
		Rate:           *rate,
		RateEnd:        *rateEnd,
		Duration:       *duration,
		Messages:       *messages,
		Within:         *within,
		Concurrency:    *concurrency,
		Conversations:  *conversations,
		Mix:            mix,
		Follow:         loadtest.LoadFollow(*follow),
		Deadline:       *deadline,
		Linger:         *linger,
		RequestTimeout: *timeout,
		Seed:           *seed,
		Logger:         logger,
	})
	if rep == nil {
		return fmt.Errorf("loadtest: %w", runErr)
	}

	// An interrupted run still reports what it saw.
	errs := []error{runErr}
	errs = append(errs, rep.WriteText(stdout))
	if *jsonPath != "" {
		errs = append(errs, loadtestWriteFile(*jsonPath, rep.WriteJSON))
	}
	if *htmlPath != "" {
		errs = append(errs, loadtestWriteFile(*htmlPath, rep.WriteHTML))
	}
	errs = append(errs, rep.Check())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	return nil
}

// loadtestWriteFile writes a report file through write.
func loadtestWriteFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
