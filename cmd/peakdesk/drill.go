package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// drillConfig is one order drill: the orders load-test scenario against
// every role of peakdesk in this process (embedded JetStream, a scratch
// database on the configured Postgres, dropped at the end, the configured
// Redis; all on this machine), the simulated LLM and shop on loopback, and
// the shop API down for a while in the middle of the run.
type drillConfig struct {
	Rate                float64
	Duration            time.Duration
	OutageAt, OutageFor time.Duration
	// LLMDown runs the whole drill with the LLM provider down.
	LLMDown bool
	// FirstBudget and Deadline are the orders scenario's.
	FirstBudget, Deadline time.Duration
	// Linger is how long the streams stay open after the last final
	// answer, to catch a second one (0: the scenario's default, 3 s).
	Linger time.Duration
	// FollowUpStep and FollowUpMaxAttempts are the follow-ups' schedule
	// (0: the configured defaults); tests compress them.
	FollowUpStep        time.Duration
	FollowUpMaxAttempts int
	// Getenv supplies DATABASE_URL (the server the drill makes its
	// database on; its role needs CREATEDB) and REDIS_URL.
	Getenv func(string) string
	// OwnDatabase says DATABASE_URL is a migrated database of this drill's
	// alone already (tests: storagetest's), used as it is.
	OwnDatabase bool
	// Log receives peakdesk's logs (warnings and up) and progress.
	Log io.Writer
}

// drillResult is what a drill found.
type drillResult struct {
	Report *loadtest.OrdersReport `json:"report"`
	// OutageFrom and OutageTo are when the shop API was down, in seconds
	// from the start.
	OutageFrom float64 `json:"outage_from_s,omitempty"`
	OutageTo   float64 `json:"outage_to_s,omitempty"`
	// ShopCalls counts the simulated shop's answers by route and status.
	ShopCalls map[string]map[int]int64 `json:"shop_calls"`
	LLMDown   bool                     `json:"llm_down"`
}

// runDrill runs `peakdesk drill orders`: bounded, it stops by itself and
// exits non-zero when a customer went without a first reply in budget or
// without exactly one final answer (or, with --llm-down, was handed to a
// human instead of answered from the shop's data).
func runDrill(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) > 0 && isHelpArg(args[0]) {
		args = []string{"orders", "-h"}
	}
	if len(args) > 0 && args[0] == "faults" {
		return runDrillFaults(ctx, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "orders" {
		return errors.New("usage: peakdesk drill faults [--short | flags] | peakdesk drill orders [--rate 5 --duration 4m --outage-at 1m --outage-for 2m --llm-down --json FILE]")
	}
	fs := flag.NewFlagSet("drill orders", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, "drill", "")
	cfg := drillConfig{Getenv: getenv, Log: stderr}
	fs.Float64Var(&cfg.Rate, "rate", 5, "customers asking per second")
	fs.DurationVar(&cfg.Duration, "duration", 4*time.Minute, "how long customers keep coming")
	fs.DurationVar(&cfg.OutageAt, "outage-at", time.Minute, "when the shop API goes down")
	fs.DurationVar(&cfg.OutageFor, "outage-for", 2*time.Minute, "how long the shop API stays down (0: no outage)")
	fs.BoolVar(&cfg.LLMDown, "llm-down", false, "the LLM provider is down for the whole run")
	fs.DurationVar(&cfg.FirstBudget, "first-budget", 25*time.Second, "the message's budget: every customer's first reply must come within it")
	fs.DurationVar(&cfg.Deadline, "deadline", 5*time.Minute, "how long after the last question the drill waits for final answers")
	jsonOut := fs.String("json", "", "also write the result as JSON to `FILE`")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if cfg.Rate <= 0 || cfg.Duration <= 0 || cfg.OutageAt < 0 || cfg.OutageFor < 0 || cfg.Deadline <= 0 {
		return errors.New("drill orders: --rate, --duration and --deadline must be positive, the outage not negative")
	}
	fmt.Fprintf(stdout, "peakdesk drill orders: %.1f customers/s for %s, shop API down from %s for %s, LLM %s\n",
		cfg.Rate, cfg.Duration, cfg.OutageAt, cfg.OutageFor, map[bool]string{true: "down", false: "up"}[cfg.LLMDown])
	res, err := drillOrders(ctx, cfg)
	if err != nil {
		return fmt.Errorf("drill orders: %w", err)
	}
	res.Report.Print(stdout)
	fmt.Fprintf(stdout, "shop API down\tfrom %.1f s to %.1f s\nshop calls\t%v\n", res.OutageFrom, res.OutageTo, res.ShopCalls)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return fmt.Errorf("drill orders: %w", err)
		}
	}
	if problem := res.problem(); problem != "" {
		return fmt.Errorf("drill orders: %s", problem)
	}
	fmt.Fprintln(stdout, "drill passed: every customer got a first reply within the budget and exactly one final answer")
	return nil
}

// problem says what the drill found wrong, or "".
func (r *drillResult) problem() string {
	rep := r.Report
	switch {
	case rep.Accepted != rep.Customers:
		return fmt.Sprintf("%d of %d questions were not accepted (%v)", rep.Customers-rep.Accepted, rep.Customers, rep.Errors)
	case rep.FirstInBudget != rep.Accepted:
		return fmt.Sprintf("%d customers got no first reply within the budget", rep.Accepted-rep.FirstInBudget)
	case rep.Lost > 0 || rep.Twice > 0:
		return fmt.Sprintf("%d customers without a final answer, %d answered twice", rep.Lost, rep.Twice)
	case rep.WrongLanguage > 0:
		return fmt.Sprintf("%d customers got a text in the other language", rep.WrongLanguage)
	case r.LLMDown:
		// Every order question is answered from the shop's data: directly
		// or by a follow-up, not by the FAQ, a fallback or a human.
		if other := rep.FinalOnce + rep.Twice - rep.FinalSources[peakdesk.SourceOrder] - rep.FinalSources[peakdesk.SourceFollowUp]; other > 0 {
			return fmt.Sprintf("with the LLM down %d customers were not answered from the shop's data (%v)", other, rep.FinalSources)
		}
	}
	return ""
}

// drillOrders runs one drill.
func drillOrders(ctx context.Context, cfg drillConfig) (*drillResult, error) {
	dir, err := os.MkdirTemp("", "peakdesk-drill-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	// The simulated LLM (the default dev latency) and shop on loopback.
	llm := llmsim.New(llmsim.Faults{Latency: 300 * time.Millisecond, LatencyJitter: 100 * time.Millisecond, Outage: cfg.LLMDown})
	llmURL, stopLLM, err := serveLoopback(llm)
	if err != nil {
		return nil, err
	}
	defer stopLLM()
	webhookSecret := randomHex(16)
	shop := shopsim.New(shopsim.Faults{LatencyMS: 50, LatencyJitterMS: 20}, []byte(webhookSecret))
	shopURL, stopShop, err := serveLoopback(shop)
	if err != nil {
		return nil, err
	}
	defer stopShop()

	// The drill's shop: replies go to the simulated shop's webhook receiver.
	// Everything the drill touches is on this machine: it writes a shop of
	// its own into the database and offers load, never to another host.
	dbURL := databaseURL(cfg.Getenv)
	redisURL := cmp.Or(strings.TrimSpace(cfg.Getenv("REDIS_URL")), "redis://127.0.0.1:6379/0")
	for name, u := range map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": redisURL} {
		if err := loopbackOnly(u); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	// A database of its own (the relays of other processes on the same
	// database would carry out its follow-ups) and a shop of its own (Redis
	// is shared: rate limits, lookups, breakers are keyed by shop).
	if !cfg.OwnDatabase {
		scratch, dropDB, err := storage.ScratchDatabase(ctx, dbURL, "peakdesk_drill_")
		if err != nil {
			return nil, err
		}
		defer func() {
			if err := dropDB(context.WithoutCancel(ctx)); err != nil {
				fmt.Fprintf(cfg.Log, "drill orders: %v\n", err)
			}
		}()
		dbURL = scratch
	}
	drillShop := "drill-" + randomHex(4)
	db, err := storage.Open(ctx, dbURL, 2)
	if err != nil {
		return nil, err
	}
	err = errors.Join(db.EnsureShop(ctx, drillShop, "Order drill"),
		db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: drillShop}),
		db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: drillShop, WebhookURL: shopURL + "/webhooks/replies",
			WebhookSecret: webhookSecret}))
	db.Close()
	if err != nil {
		return nil, err
	}

	// Every role in this process, on an embedded JetStream of its own.
	ns, err := queue.StartNATS(queue.NATSServerConfig{StoreDir: filepath.Join(dir, "jetstream"), Port: -1})
	if err != nil {
		return nil, err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	secret := randomHex(32)
	masterKey := randomHex(32)
	pc := envDefaults(func(k string) string {
		switch k {
		case "NATS_URL":
			return ns.ClientURL()
		case "PEAKDESK_HTTP_ADDR":
			return "127.0.0.1:0"
		case "PEAKDESK_METRICS_ADDR":
			return ""
		case "PEAKDESK_DATA_DIR":
			return dir
		case "PEAKDESK_JWT_SECRET":
			return secret
		case "PEAKDESK_LLM_BASE_URL":
			return llmURL + "/v1"
		case "PEAKDESK_SHOP_API_URL":
			return shopURL
		case "PEAKDESK_LOG_LEVEL":
			return "warn"
		case "DATABASE_URL":
			return dbURL
		case "PEAKDESK_MASTER_KEY":
			return masterKey // the drill's database is its own
		case "REDIS_URL":
			return redisURL
		}
		return cfg.Getenv(k)
	}, false)
	pc.Roles = []string{roleIngest, roleWorker, roleRelay}
	pc.MetricsAddr = ""            // no listener but the edge's, on a free loopback port
	pc.AllowPrivateShopURLs = true // the simulated shop listens on loopback
	pc.SnapshotPrefix = "pd:drill:" + randomHex(4) + ":"
	if cfg.FollowUpStep > 0 {
		pc.FollowUpStep = cfg.FollowUpStep
	}
	if cfg.FollowUpMaxAttempts > 0 {
		pc.FollowUpMaxAttempts = cfg.FollowUpMaxAttempts
	}
	if err := pc.validate(); err != nil {
		return nil, err
	}
	p := NewProgram(pc, cfg.Log)
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	defer p.Stop()

	// The outage, on its own schedule.
	res := &drillResult{LLMDown: cfg.LLMDown}
	start := time.Now()
	outage := make(chan struct{})
	go func() {
		defer close(outage)
		if cfg.OutageFor <= 0 || peakdesk.Sleep(ctx, cfg.OutageAt) != nil {
			return
		}
		shop.SetFaults(shopsim.Faults{Down: true})
		res.OutageFrom = time.Since(start).Seconds()
		_ = peakdesk.Sleep(ctx, cfg.OutageFor)
		shop.SetFaults(shopsim.Faults{LatencyMS: 50, LatencyJitterMS: 20})
		res.OutageTo = time.Since(start).Seconds()
	}()
	rep, err := loadtest.RunOrders(ctx, loadtest.OrdersConfig{BaseURL: "http://" + p.Addr(), Secret: []byte(secret),
		Shop: drillShop, Rate: cfg.Rate, Duration: cfg.Duration, FirstBudget: cfg.FirstBudget, Deadline: cfg.Deadline, Linger: cfg.Linger,
		Logger: slog.New(slog.NewTextHandler(cfg.Log, nil))})
	<-outage
	if err != nil {
		return nil, err
	}
	res.Report, res.ShopCalls = rep, shop.Stats().Requests
	return res, nil
}

// serveLoopback serves h on a free loopback port.
func serveLoopback(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// loopbackOnly refuses a service URL whose host is not this machine (a
// Unix socket is).
func loopbackOnly(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return errors.New("the drill takes a URL (scheme://host/...) of a service on this machine")
	}
	host := u.Hostname()
	if host == "" || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("the drill runs against services on this machine only, not %q", host)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func databaseURL(getenv func(string) string) string {
	if u := strings.TrimSpace(getenv("DATABASE_URL")); u != "" {
		return u
	}
	return defaultDatabaseURL
}
