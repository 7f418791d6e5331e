package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard"
	"github.com/peakdesk/peakdesk/dashboard/snapshot"
	"github.com/peakdesk/peakdesk/ingest"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/ingest/widget"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/outbox/shopapi"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/retention"
	"github.com/peakdesk/peakdesk/storage/shopwatch"
	"github.com/peakdesk/peakdesk/workers"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/faq"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/shedwriter"
)

// Program is one running peakdesk process: its connections, its roles and
// its HTTP server. Tests run it in-process on :0 ports.
type Program struct {
	Config Config
	Log    *slog.Logger

	registry *prometheus.Registry
	natsSrv  *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	db       *storage.DB
	rdb      *redis.Client
	llmSrv   *http.Server
	shopSrv  *http.Server // the simulated shop API in dev
	faq      *faq.Engine
	shop     *shopapi.Client
	orders   *orderAnswers // lookups, texts and tools of order answers
	relay    *outbox.Relay
	redactor *retention.Redactor // masks expired chat texts (relay role)
	edge     *ingest.Edge
	worker   *workers.Worker
	shedW    *shedwriter.Writer // stores the edge's shed answers (worker role)
	answerer *answer.Answerer
	console  *dashboard.Console
	reporter *snapshot.Reporter
	watch    *shopwatch.Watcher // tells the caches when a shop's settings change
	httpSrv  *http.Server
	listener net.Listener
	// metricsSrv serves /metrics on its own listener, apart from the API.
	metricsSrv      *http.Server
	metricsListener net.Listener
	serveErr        chan error

	// Human takeover: the agents' operations (dashboard role) and the
	// handoff_sla notices (relay role).
	desk  *outbox.Desk
	waits *outbox.WaitNotifier

	stopOnce sync.Once
}

// NewProgram returns a Program for cfg that logs to logw: human-readable
// text when logw is a terminal (or cfg.LogFormat says text), JSON otherwise.
func NewProgram(cfg Config, logw io.Writer) *Program {
	level := slog.LevelInfo
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(logw, opts)
	if cfg.LogFormat == "text" || (cfg.LogFormat != "json" && isTerminal(logw)) {
		h = slog.NewTextHandler(logw, opts)
	}
	return &Program{Config: cfg, Log: slog.New(h), serveErr: make(chan error, 2)}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Addr is the address the HTTP server listens on, once started.
func (p *Program) Addr() string { return p.listener.Addr().String() }

// MetricsAddr is the address /metrics is served on, once started; empty
// when MetricsAddr is not configured.
func (p *Program) MetricsAddr() string {
	if p.metricsListener == nil {
		return ""
	}
	return p.metricsListener.Addr().String()
}

// Start connects to the services, starts the configured roles and the HTTP
// server, and returns once all of them are up. On failure it undoes what it
// started.
func (p *Program) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			p.Stop()
		}
	}()
	cfg := &p.Config
	p.registry = prometheus.NewRegistry()
	p.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfoCollector(readBuildInfo()))

	// Queue: external NATS, or in dev an embedded server.
	natsURL := cfg.NATSURL
	if natsURL == "" {
		p.natsSrv, err = queue.StartNATS(queue.NATSServerConfig{
			StoreDir: filepath.Join(cfg.DataDir, "jetstream"), Port: -1, SyncAlways: cfg.NATSSyncAlways,
		})
		if err != nil {
			return err
		}
		natsURL = p.natsSrv.ClientURL()
		p.Log.Info("embedded NATS JetStream started", "url", natsURL, "store", filepath.Join(cfg.DataDir, "jetstream"),
			"sync_always", cfg.NATSSyncAlways)
	}
	conn := cfg.natsConnect("")
	conn.URL = natsURL
	if p.nc, err = queue.Connect(conn); err != nil {
		return err
	}
	if p.js, err = jetstream.New(p.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	// The streams and consumers: made here, or (per-role NATS users, which
	// may not change them) made by `peakdesk migrate` and checked here.
	ensure := queue.EnsureTopology
	if cfg.NATSTopology == topologyCheck {
		ensure = queue.CheckTopology
	}
	_, err = ensure(ctx, p.js, queue.Topology{
		AckWait: cfg.AckWait, AckWaitP0: cfg.AckWaitP0, Replicas: cfg.StreamReplicas,
	})
	if err != nil {
		return err
	}

	// Postgres and Redis.
	if p.db, err = storage.Open(ctx, cfg.DatabaseURL, int32(cfg.DBMaxConns)); err != nil {
		return err
	}
	if cfg.Migrate {
		if err := p.db.Migrate(ctx); err != nil {
			return err
		}
	}
	if err := p.useSecrets(ctx); err != nil {
		return err
	}
	if cfg.Dev {
		if err := p.db.EnsureShop(ctx, "demo", "Demo Shop"); err != nil {
			return err
		}
	}
	if p.rdb, err = storage.OpenRedis(cfg.RedisURL); err != nil {
		return err
	}
	secret := []byte(cfg.JWTSecret)
	if len(secret) == 0 {
		p.Log.Warn("PEAKDESK_JWT_SECRET is unset: dev mode signs tokens with a public dev-only secret")
		secret = []byte(devSecret)
	}
	// One authenticator for every API of the process: platform tokens and
	// the shops' own keys, with one cache.
	var previous [][]byte
	for _, s := range cfg.JWTPreviousSecrets {
		previous = append(previous, []byte(s))
	}
	auth, err := token.NewShopAuthenticator(token.Config{Secret: secret, PreviousSecrets: previous, DB: p.db})
	if err != nil {
		return err
	}

	// The shop API (the simulator in dev) and the FAQ engine, shared by the
	// edge's load shedding and the workers' fallback.
	if err := p.startShopAPI(ctx); err != nil {
		return err
	}
	if cfg.Dev {
		if err := seedDemo(ctx, p.db); err != nil {
			return err
		}
	}
	if p.orders, err = p.newOrderAnswers(); err != nil {
		return err
	}
	if cfg.hasRole(roleIngest) || cfg.hasRole(roleWorker) {
		if p.faq, err = faq.New(faq.Config{DB: p.db, Logger: p.Log, Registerer: p.registry}); err != nil {
			return err
		}
		if err := p.faq.Start(ctx); err != nil {
			return err
		}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", p.ready)

	if cfg.hasRole(roleIngest) {
		devOrigins, err := cfg.devOrigins()
		if err != nil {
			return err
		}
		p.edge, err = ingest.New(ingest.Config{
			Secret: secret, PreviousSecrets: previous, Auth: auth, MaxStreams: cfg.MaxStreams,
			StreamOpens: cfg.StreamOpens, StreamOpenWait: cfg.StreamOpenWait, DevOrigins: devOrigins,
			DB: p.db, Redis: p.rdb, JS: p.js,
			Logger: p.Log, Registerer: p.registry,
			BatchPublish: cfg.PublishBatch,
			FAQ:          edgeFAQ{p.faq},
			FAQCacheTTL:  cfg.FAQCacheTTL, MaxInFlight: cfg.MaxInFlight,
			Orders: p.orders.tools,
			Admission: ingest.AdmissionConfig{Disabled: cfg.AdmissionDisabled, MinBacklog: int64(cfg.AdmissionMinBacklog),
				MaxWait: map[peakdesk.Priority]time.Duration{
					peakdesk.P0: cfg.AdmissionMaxWaitP0, peakdesk.P1: cfg.AdmissionMaxWaitP1, peakdesk.P2: cfg.AdmissionMaxWaitP2}},
		})
		if err != nil {
			return err
		}
		if err := p.edge.Start(ctx); err != nil {
			return err
		}
		p.edge.Register(mux)
		widget.Register(mux)
		if cfg.Dev {
			// The pretend shop page a newcomer chats on; dev only, since
			// anyone who loads it chats as the demo customer.
			demo := widget.Demo(widget.DemoConfig{Shop: "demo", User: demoCustomer, Order: demoOrder,
				Token: func(shop, user string, ttl time.Duration) (string, error) {
					return token.Sign(secret, shop, user, nil, ttl)
				}})
			mux.Handle("GET /demo", demo)
			mux.Handle("GET /demo/token", demo)
		}
	}
	if cfg.hasRole(roleWorker) {
		// Every LLM HTTP call goes through the worker's transport: the
		// provider budget and the adaptive concurrency limit.
		limits, err := workers.NewLimits(workers.LimitsConfig{
			Concurrency: cfg.WorkerConcurrency, MinConcurrency: cfg.WorkerMinConcurrency,
			ProviderRPM: cfg.LLMRPM, ProviderTPM: cfg.LLMTPM, ProviderKey: cfg.LLMModel,
			Redis: p.rdb, Logger: p.Log, Registerer: p.registry,
		})
		if err != nil {
			return err
		}
		llmTransport := workers.NewLLMTransport(nil, limits)
		base, err := p.llmBaseURL()
		if err != nil {
			return err
		}
		prices, err := llm.ParsePrices(cfg.LLMPrices) // validated
		if err != nil {
			return err
		}
		fx, err := llm.ParseFXRates(cfg.FXRates) // validated
		if err != nil {
			return err
		}
		// One Answerer per process: the model chain, the FAQ fallback shared
		// with the edge, the breakers and burst coalescing shared in Redis.
		p.answerer, err = answer.New(answer.Config{
			DB: p.db, Redis: p.rdb,
			Provider: llm.Provider{BaseURL: base, APIKey: cfg.LLMAPIKey, Models: llm.ParseModels(cfg.LLMModel),
				MaxTokensParam: cfg.LLMMaxTokensParam},
			Prices:     prices,
			FXRates:    fx,
			FAQ:        p.faq,
			HTTPClient: &http.Client{Transport: llmTransport},
			LLM:        llm.CallerConfig{CallTimeout: cfg.LLMTimeout},
			Logger:     p.Log,
			Registerer: p.registry,
		})
		if err != nil {
			return err
		}
		if err := p.answerer.Start(ctx); err != nil {
			return err
		}
		tools := p.orders.tools
		p1Weight, p2Weight, _ := cfg.workerWeights() // validated
		p.worker, err = workers.New(workers.Config{
			JS: p.js, DB: p.db, Answerer: p.answerer, Tools: tools,
			Memory:     &storage.Memory{DB: p.db, Redis: p.rdb},
			Logger:     p.Log,
			Registerer: p.registry,
			Limits:     limits,
			SoftStop:   cfg.WorkerSoftStop, // AckWait: the consumers'
			// p1:p2 weights and turn gathering (issue 5).
			P1Weight:   p1Weight,
			P2Weight:   p2Weight,
			GatherWait: cfg.WorkerGather, CommitGroup: cfg.CommitGroup,
		})
		if err != nil {
			return err
		}
		if err := p.worker.Start(ctx); err != nil {
			return err
		}
		// The edge's shed answers, stored in batches.
		if p.shedW, err = shedwriter.New(shedwriter.Config{JS: p.js, DB: p.db, Webhook: outbox.ReplyWebhook,
			MaxBatch: cfg.ShedWriterBatch, Logger: p.Log, Registerer: p.registry}); err != nil {
			return err
		}
		if err := p.shedW.Start(ctx); err != nil {
			return err
		}
	}

	if cfg.hasRole(roleRelay) {
		if err := p.startRelay(ctx); err != nil {
			return err
		}
	}

	if err := p.startMetrics(); err != nil {
		return err
	}
	if cfg.hasRole(roleDashboard) {
		if err := p.startConsole(ctx, mux, auth); err != nil {
			return err
		}
	}
	if err := p.watchSettings(ctx, auth); err != nil {
		return err
	}
	// Every process publishes a few of its metrics for the console, which
	// may run elsewhere.
	if p.reporter, err = snapshot.NewReporter(snapshot.Config{Gatherer: p.registry, Redis: p.rdb,
		Prefix: cfg.SnapshotPrefix, Logger: p.Log}); err != nil {
		return err
	}
	if err := p.reporter.Start(ctx); err != nil {
		return err
	}

	if p.listener, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	p.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(p.Log.Handler(), slog.LevelWarn),
	}
	if p.edge != nil {
		p.httpSrv.RegisterOnShutdown(p.edge.CloseStreams)
	}
	go func() { p.serveErr <- p.httpSrv.Serve(p.listener) }()
	b := readBuildInfo()
	p.Log.Info("peakdesk started", "version", b.Version, "commit", b.Commit, "addr", p.Addr(),
		"metrics_addr", p.MetricsAddr(), "roles", strings.Join(cfg.Roles, ","), "dev", cfg.Dev)
	return nil
}

// startMetrics serves /metrics (and /healthz, for probes on the same port)
// on MetricsAddr: a listener of its own, so the API port exposes no
// metrics and the metrics port can stay on loopback or a private network.
func (p *Program) startMetrics() error {
	if p.Config.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", p.Config.MetricsAddr)
	if err != nil {
		return fmt.Errorf("listen %s (PEAKDESK_METRICS_ADDR): %w", p.Config.MetricsAddr, err)
	}
	p.metricsListener = ln
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{Registry: p.registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	if p.Config.Pprof {
		// Profiles on the metrics listener only: never on the API port.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	writeTimeout := 30 * time.Second
	if p.Config.Pprof {
		writeTimeout = 5 * time.Minute // a CPU profile or trace takes ?seconds= to write
	}
	p.metricsSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      writeTimeout,
		ErrorLog:          slog.NewLogLogger(p.Log.Handler(), slog.LevelWarn),
	}
	go func() { p.serveErr <- p.metricsSrv.Serve(ln) }()
	return nil
}

// llmBaseURL returns the LLM provider's base URL: the configured one, or in
// dev the built-in simulator's behind a loopback listener, so the real
// client code path is the same in both.
func (p *Program) llmBaseURL() (string, error) {
	if base := p.Config.LLMBaseURL; base != "" {
		return base, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("simulated llm: %w", err)
	}
	sim := llmsim.New(llmsim.Faults{Latency: 300 * time.Millisecond, LatencyJitter: 100 * time.Millisecond})
	p.llmSrv = &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = p.llmSrv.Serve(ln) }()
	base := "http://" + ln.Addr().String() + "/v1"
	p.Log.Info("using the built-in simulated LLM (set PEAKDESK_LLM_BASE_URL for a real provider)", "url", base)
	return base, nil
}

func (p *Program) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var problems []string
	if p.nc.Status() != nats.CONNECTED {
		problems = append(problems, "nats: "+p.nc.Status().String())
	}
	if err := p.db.Ping(ctx); err != nil {
		problems = append(problems, "postgres: unreachable")
	}
	if len(problems) > 0 {
		http.Error(w, strings.Join(problems, "\n"), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// Wait blocks until ctx is done or the HTTP server fails.
func (p *Program) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-p.serveErr:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("http server: %w", err)
	}
}

// Stop shuts down in dependency order: stop taking requests, let workers
// finish or release their messages, then close connections. Idempotent.
func (p *Program) Stop() {
	p.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if p.httpSrv != nil {
			_ = p.httpSrv.Shutdown(ctx) // ends event streams, waits for requests in flight
		}
		if p.metricsSrv != nil {
			_ = p.metricsSrv.Shutdown(ctx)
		}
		if p.console != nil {
			p.console.Stop()
		}
		if p.watch != nil {
			p.watch.Stop()
		}
		if p.reporter != nil {
			p.reporter.Stop()
		}
		if p.edge != nil {
			p.edge.Stop()
		}
		if p.worker != nil {
			p.worker.Stop()
		}
		if p.shedW != nil {
			p.shedW.Stop()
		}
		if p.answerer != nil {
			p.answerer.Stop()
		}
		if p.relay != nil {
			p.relay.Stop()
		}
		if p.orders != nil {
			p.orders.lookups.Wait() // lookups whose customers stopped waiting
		}
		if p.redactor != nil {
			p.redactor.Stop()
		}
		if p.waits != nil {
			p.waits.Stop()
		}
		if p.faq != nil {
			p.faq.Stop()
		}
		if p.shopSrv != nil {
			_ = p.shopSrv.Shutdown(ctx)
		}
		if p.llmSrv != nil {
			_ = p.llmSrv.Shutdown(ctx)
		}
		if p.nc != nil {
			_ = p.nc.Drain()
			for p.nc.IsDraining() && ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond)
			}
			p.nc.Close()
		}
		if p.natsSrv != nil {
			p.natsSrv.Shutdown()
			p.natsSrv.WaitForShutdown()
		}
		if p.db != nil {
			p.db.Close()
		}
		if p.rdb != nil {
			_ = p.rdb.Close()
		}
		p.Log.Info("peakdesk stopped")
	})
}
