package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// The multi-process fault drill (issue 17; issue 16's worker SIGKILL
// target): 2 ingest, 3 worker and 2 relay processes (`peakdesk serve
// --roles …`) on a Postgres and a Redis of the drill's own, a standalone
// JetStream, the simulated LLM and shop API, all on loopback; a steady load
// with a p0/p1/p2 mix and refund requests that go through the outbox to the
// shop; and, one after the other, the faults: SIGKILL a worker, SIGKILL a
// relay, restart Postgres, stop Redis, LLM outage, shop API down. At the
// end: 0 lost, 0 duplicated replies, every refund applied by the shop
// exactly once, and per fault how long the desk took to recover.

// faultsConfig is one fault drill. Durations are the compressed timings.
type faultsConfig struct {
	// Rate is the steady load in messages per second.
	Rate float64
	// RefundEvery is how often a customer asks for a refund of an order of
	// theirs (each a different customer and order).
	RefundEvery time.Duration
	// LLMLatency is the simulated LLM's mean latency (± a third).
	LLMLatency time.Duration
	// Warmup is the steady load before the first fault; Gap the load
	// between the end of one fault and the next.
	Warmup, Gap time.Duration
	// RestartAfter is how long a SIGKILLed process stays dead before it is
	// started again (the orchestrator's restart).
	RestartAfter time.Duration
	// RedisDown, LLMDown and ShopDown are how long each outage lasts.
	RedisDown, LLMDown, ShopDown time.Duration
	// P0Window is how long after the worker SIGKILL the answers of p0
	// messages count for the p0 p99 around the kill.
	P0Window time.Duration
	// Deadline is how long after the load the drill waits for answers and
	// for the shop to have applied every refund.
	Deadline time.Duration
	// Only, when set, names the faults to inject (faultKeys); the others
	// are left out.
	Only []string
	// Command returns the command that runs `peakdesk serve --roles roles`
	// (nil: this executable).
	Command func(roles string) *exec.Cmd
	// Log receives progress and the processes' warnings and errors.
	Log io.Writer
}

// Fault names, in the order the drill injects them.
const (
	faultWorkerKill = "worker SIGKILL"
	faultRelayKill  = "relay SIGKILL"
	faultPGRestart  = "Postgres restart"
	faultRedisStop  = "Redis stopped"
	faultLLMOutage  = "LLM outage"
	faultShopDown   = "shop API down"
)

// faultKeys name the faults for --only, in the order of the drill.
var faultKeys = []string{"worker-kill", "relay-kill", "pg-restart", "redis-stop", "llm-outage", "shop-down"}

// p0KillTarget is issue 16's target for the p0 answer p99 around a worker
// SIGKILL.
const p0KillTarget = 5 * time.Second

// faultWindow is what the load saw around one fault. Times are seconds
// since the load started; latencies are answer latencies (POST sent →
// first reply seen) in milliseconds, from the load test's per-second
// series: the worst per-second p99 is an upper bound of the p99.
type faultWindow struct {
	Name string  `json:"name"`
	From float64 `json:"from_s"`
	To   float64 `json:"to_s"`
	// AnsweredDuring and RefusedDuring count answers seen and offers the
	// edge refused or failed (any status but 202/200) from From to To+Gap.
	AnsweredDuring int `json:"answered_during"`
	RefusedDuring  int `json:"refused_during"`
	// P99During is the worst per-second p99 of answers seen from From to
	// To+Gap.
	P99During float64 `json:"p99_during_ms"`
	// FirstAnswerAfter is the time from To to the first second after it
	// with an answer seen (whole seconds).
	FirstAnswerAfter float64 `json:"first_answer_after_s"`
	// RecoveredAfter is the time from To until the desk answered as before
	// the faults: the first second whose p99 is within the normal bound and
	// whose backlog is no larger than before the fault (whole seconds; -1:
	// not within the run).
	RecoveredAfter float64 `json:"recovered_after_s"`
	// RefundEffectAfter is, for the shop outage, the time from To until the
	// shop applied the first refund after it (-1: none).
	RefundEffectAfter float64 `json:"refund_effect_after_s,omitempty"`

	from, to time.Time
}

// refundCheck is what became of the refund requests.
type refundCheck struct {
	Asked    int `json:"asked"`
	Accepted int `json:"accepted"`
	Answered int `json:"answered"`
	// Granted counts replies that said the refund was requested.
	Granted int `json:"granted"`
	// Actions counts refund actions in the outbox, Succeeded those the shop
	// confirmed.
	Actions   int `json:"actions"`
	Succeeded int `json:"succeeded"`
	// Effects counts refunds the shop applied; DuplicateEffects the orders
	// refunded more than once, Orphans the refunds without an action.
	Effects          int      `json:"effects"`
	DuplicateEffects int      `json:"duplicate_effects"`
	Orphans          int      `json:"orphans"`
	Unanswered       []string `json:"unanswered,omitempty"`
	Unfinished       []string `json:"unfinished,omitempty"`
}

// faultsResult is what a fault drill found.
type faultsResult struct {
	Load    *loadtest.LoadReport `json:"load"`
	Faults  []faultWindow        `json:"faults"`
	Refunds refundCheck          `json:"refunds"`
	// NormalP99 is the bound of a normal second: twice the worst
	// per-second p99 of the warmup, at least 1 s.
	NormalP99 float64 `json:"normal_p99_ms"`
	// P0KillP99 is the worst per-second p0 answer p99 from the worker
	// SIGKILL to P0Window after it, over P0KillCount answers.
	P0KillP99   float64 `json:"p0_kill_p99_ms"`
	P0KillCount int64   `json:"p0_kill_answers"`
	// P0Burst is what became of the p0 messages sent just before the
	// worker SIGKILL, some of them held by the victim when it died.
	P0Burst p0BurstResult `json:"p0_burst"`
	// HandedBack counts the conversations the bot handed to a human that
	// the drill's agent gave back to the bot.
	HandedBack int `json:"handed_back"`
}

// runDrillDesk is the drill's human agent: every second it hands every
// conversation waiting for a human back to the bot, until ctx ends, and
// returns how many it handed back.
func runDrillDesk(ctx context.Context, db *storage.DB, shop string) int {
	agent := storage.DeskActor{Agent: "drill-desk", Scope: shop, Supervisor: true, Via: "api"}
	n := 0
	for peakdesk.Sleep(ctx, time.Second) == nil {
		in, err := db.Inbox(ctx, shop, agent.Agent, 500)
		if err != nil {
			continue // Postgres restarting: next second
		}
		for _, e := range in.Waiting {
			if _, err := db.HandBack(ctx, agent, e.ConversationID); err == nil {
				n++
			}
		}
	}
	return n
}

// problem says what was lost or duplicated, or "".
func (r *faultsResult) problem() string {
	rep, rf := r.Load, r.Refunds
	var p []string
	if rep.Accepted == 0 {
		p = append(p, "no message was accepted")
	}
	if rep.Lost > 0 || rep.Duplicates > 0 || rep.ShedUnstored > 0 {
		p = append(p, fmt.Sprintf("%d messages lost, %d answered twice, %d answers on POST not stored (lost: %v; twice: %v)",
			rep.Lost, rep.Duplicates, rep.ShedUnstored, rep.LostSamples, rep.DuplicateSamples))
	}
	if b := r.P0Burst; b.Accepted != b.Sent || b.Answered != b.Accepted {
		p = append(p, fmt.Sprintf("of the %d p0 messages sent at the worker SIGKILL %d were accepted, %d answered", b.Sent, b.Accepted, b.Answered))
	}
	if len(rf.Unanswered) > 0 {
		p = append(p, fmt.Sprintf("%d refund requests unanswered: %v", len(rf.Unanswered), rf.Unanswered))
	}
	if rf.Succeeded != rf.Actions || len(rf.Unfinished) > 0 {
		p = append(p, fmt.Sprintf("%d of %d refund actions not carried out: %v", rf.Actions-rf.Succeeded, rf.Actions, rf.Unfinished))
	}
	if rf.DuplicateEffects > 0 || rf.Orphans > 0 || rf.Effects != rf.Succeeded {
		p = append(p, fmt.Sprintf("the shop applied %d refunds for %d actions (%d orders twice, %d without an action)",
			rf.Effects, rf.Succeeded, rf.DuplicateEffects, rf.Orphans))
	}
	return strings.Join(p, "; ")
}

// runDrillFaults runs `peakdesk drill faults`.
func runDrillFaults(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("drill faults", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, "drill", "")
	cfg := faultsConfig{Log: stderr}
	fs.Float64Var(&cfg.Rate, "rate", 10, "steady load, messages per second (p0/p1/p2 mixed 1:2:2)")
	fs.DurationVar(&cfg.RefundEvery, "refund-every", time.Second, "one refund request of a new customer this often")
	fs.DurationVar(&cfg.LLMLatency, "llm-latency", 300*time.Millisecond, "the simulated LLM's mean latency (± a third)")
	fs.DurationVar(&cfg.Warmup, "warmup", 20*time.Second, "steady load before the first fault")
	fs.DurationVar(&cfg.Gap, "gap", 30*time.Second, "steady load after each fault before the next")
	fs.DurationVar(&cfg.RestartAfter, "restart-after", 5*time.Second, "how long a SIGKILLed process stays dead")
	fs.DurationVar(&cfg.RedisDown, "redis-down", time.Minute, "how long Redis is stopped")
	fs.DurationVar(&cfg.LLMDown, "llm-down", time.Minute, "how long the LLM provider is down")
	fs.DurationVar(&cfg.ShopDown, "shop-down", time.Minute, "how long the shop API is down")
	fs.DurationVar(&cfg.P0Window, "p0-window", 10*time.Second, "answers of p0 messages this long after the worker SIGKILL make its p0 p99")
	fs.DurationVar(&cfg.Deadline, "deadline", 3*time.Minute, "how long after the load the drill waits for answers and refunds")
	short := fs.Bool("short", false, "compressed timings (about 90 s): warmup 6s, gaps 5s, outages 5s")
	only := fs.String("only", "", "inject only these faults (comma-separated: "+strings.Join(faultKeys, ", ")+")")
	jsonOut := fs.String("json", "", "also write the result as JSON to `FILE`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *short {
		cfg = shortFaultsConfig(stderr)
	}
	for k := range strings.SplitSeq(*only, ",") {
		if k = strings.TrimSpace(k); k == "" {
			continue
		}
		if !slices.Contains(faultKeys, k) {
			return fmt.Errorf("drill faults: --only: unknown fault %q (want %s)", k, strings.Join(faultKeys, ", "))
		}
		cfg.Only = append(cfg.Only, k)
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("drill faults: %w", err)
	}
	fmt.Fprintf(stdout, "peakdesk drill faults: %.1f messages/s, a refund every %s; faults: worker and relay SIGKILL (dead %s), "+
		"Postgres restart, Redis down %s, LLM down %s, shop API down %s; %s between\n",
		cfg.Rate, cfg.RefundEvery, cfg.RestartAfter, cfg.RedisDown, cfg.LLMDown, cfg.ShopDown, cfg.Gap)
	res, err := drillFaults(ctx, cfg)
	if err != nil {
		return fmt.Errorf("drill faults: %w", err)
	}
	res.print(stdout)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return fmt.Errorf("drill faults: %w", err)
		}
	}
	if problem := res.problem(); problem != "" {
		return fmt.Errorf("drill faults: %s", problem)
	}
	if p99 := max(res.P0KillP99, res.P0Burst.P99); p99 > float64(p0KillTarget.Milliseconds()) {
		return fmt.Errorf("drill faults: p0 answer p99 around the worker SIGKILL %.0f ms, over the %s target", p99, p0KillTarget)
	}
	fmt.Fprintln(stdout, "drill passed: 0 lost, 0 duplicated replies, every refund applied once, p0 p99 around the worker SIGKILL within 5 s")
	return nil
}

// shortFaultsConfig is the bounded version `make test` runs (about 90 s).
func shortFaultsConfig(log io.Writer) faultsConfig {
	return faultsConfig{Rate: 6, LLMLatency: 300 * time.Millisecond, RefundEvery: 1500 * time.Millisecond, Warmup: 6 * time.Second, Gap: 5 * time.Second,
		RestartAfter: time.Second, RedisDown: 5 * time.Second, LLMDown: 5 * time.Second, ShopDown: 5 * time.Second,
		P0Window: 10 * time.Second, Deadline: 90 * time.Second, Log: log}
}

func (c *faultsConfig) validate() error {
	switch {
	case c.Rate <= 0 || c.RefundEvery <= 0:
		return errors.New("--rate and --refund-every must be positive")
	case c.Warmup <= 0 || c.Gap <= 0 || c.Deadline <= 0 || c.P0Window <= 0:
		return errors.New("--warmup, --gap, --p0-window and --deadline must be positive")
	case c.LLMLatency < 0 || c.RestartAfter < 0 || c.RedisDown < 0 || c.LLMDown < 0 || c.ShopDown < 0:
		return errors.New("the outages must not be negative")
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// planned is how long the load must run for every fault and its gap
// (Postgres's restart counted at 5 s).
func (c *faultsConfig) planned() time.Duration {
	return c.Warmup + 2*(c.RestartAfter+c.Gap) + 5*time.Second + c.Gap + c.RedisDown + c.Gap + c.LLMDown + c.Gap + c.ShopDown + c.Gap
}

// drillFaults runs one fault drill.
func drillFaults(ctx context.Context, cfg faultsConfig) (res *faultsResult, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logf := func(format string, args ...any) { fmt.Fprintf(cfg.Log, "drill faults: "+format+"\n", args...) }
	if cfg.Command == nil {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Command = func(roles string) *exec.Cmd { return exec.Command(exe, "serve", "--roles", roles) }
	}
	dir, err := os.MkdirTemp("", "peakdesk-faults-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	// Postgres and Redis of the drill's own.
	pg, err := startDrillPostgres(ctx, filepath.Join(dir, "pg"))
	if err != nil {
		return nil, err
	}
	defer pg.stop()
	if err := pg.createDatabase(ctx, "peakdesk"); err != nil {
		return nil, err
	}
	dbURL := pg.URL("peakdesk")
	rds, err := startDrillRedis(ctx, filepath.Join(dir, "redis"))
	if err != nil {
		return nil, err
	}
	defer func() { rds.stop() }()
	logf("Postgres on port %d, Redis on port %d", pg.port, rds.port)

	// The standalone JetStream: no fault touches it.
	ns, err := queue.StartNATS(queue.NATSServerConfig{StoreDir: filepath.Join(dir, "jetstream"), Port: -1})
	if err != nil {
		return nil, err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

	// The simulated LLM and shop API.
	llmUp := llmsim.Faults{Latency: cfg.LLMLatency, LatencyJitter: cfg.LLMLatency / 3}
	llm := llmsim.New(llmUp)
	llmURL, stopLLM, err := serveLoopback(llm)
	if err != nil {
		return nil, err
	}
	defer stopLLM()
	shopUp := shopsim.Faults{LatencyMS: 30, LatencyJitterMS: 20}
	webhookSecret := randomHex(16)
	shop := shopsim.New(shopUp, []byte(webhookSecret))
	shopURL, stopShop, err := serveLoopback(shop)
	if err != nil {
		return nil, err
	}
	defer stopShop()

	// The schema and the drill's shop, with limits no steady load reaches.
	const drillShop = "faults"
	db, err := storage.Open(ctx, dbURL, 4)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	err = errors.Join(db.Migrate(ctx), db.EnsureShop(ctx, drillShop, "Fault drill"),
		db.SetShopLimits(ctx, drillShop, 100_000, 100_000, 100_000, 100_000),
		db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: drillShop}),
		db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: drillShop, WebhookURL: shopURL + "/webhooks/replies",
			WebhookSecret: webhookSecret}))
	if err != nil {
		return nil, err
	}

	// The role processes: ingest first (it makes the topology), then the
	// workers and relays.
	secret := randomHex(32)
	starter := &procStarter{command: cfg.Command, dataDir: dir, log: cfg.Log, logMu: &sync.Mutex{}, env: []string{
		"DATABASE_URL=" + dbURL, "REDIS_URL=" + rds.URL(), "NATS_URL=" + ns.ClientURL(),
		"PEAKDESK_JWT_SECRET=" + secret, "PEAKDESK_MASTER_KEY=" + randomHex(32),
		"PEAKDESK_LLM_BASE_URL=" + llmURL + "/v1", "PEAKDESK_SHOP_API_URL=" + shopURL,
		"PEAKDESK_ALLOW_PRIVATE_SHOP_URLS=true", "PEAKDESK_SOFT_STOP=3s",
	}}
	var procsMu sync.Mutex
	procs := map[string]*drillProc{}
	defer func() {
		procsMu.Lock()
		defer procsMu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Go(p.stop)
		}
		wg.Wait()
	}()
	startProc := func(name, roles string) error {
		p, err := starter.start(ctx, name, roles)
		if err != nil {
			return err
		}
		procsMu.Lock()
		procs[name] = p
		procsMu.Unlock()
		return nil
	}
	for _, pr := range []struct{ name, roles string }{
		{"ingest-1", roleIngest}, {"ingest-2", roleIngest},
		{"worker-1", roleWorker}, {"worker-2", roleWorker}, {"worker-3", roleWorker},
		{"relay-1", roleRelay}, {"relay-2", roleRelay},
	} {
		if err := startProc(pr.name, pr.roles); err != nil {
			return nil, err
		}
	}
	logf("7 processes started: 2 ingest, 3 worker, 2 relay")

	// The two edges behind one round-robin address, as behind a load
	// balancer; event streams are passed through as they come.
	edgeURL, stopEdge, err := serveLoopback(roundRobin(procs["ingest-1"].addr, procs["ingest-2"].addr))
	if err != nil {
		return nil, err
	}
	defer stopEdge()

	loadCtx, cancelLoad := context.WithCancel(ctx)
	defer cancelLoad()

	// The refund requests, beside the load.
	refunds := &refundAsker{base: edgeURL, secret: []byte(secret), shop: drillShop, client: &http.Client{Timeout: 30 * time.Second}}
	var refundWG sync.WaitGroup
	planned := cfg.planned()
	refundWG.Go(func() { refunds.run(loadCtx, cfg.RefundEvery, planned) })

	// The desk: what the bot handed to a human (the LLM down and no FAQ
	// entry to answer from) the drill's agent hands back to the bot, as an
	// agent who has read it would; the bot answers what waited.
	var handedBack atomic.Int64
	deskCtx, stopDesk := context.WithCancel(ctx)
	var deskWG sync.WaitGroup
	deskWG.Go(func() { handedBack.Store(int64(runDrillDesk(deskCtx, db, drillShop))) })
	defer func() { stopDesk(); deskWG.Wait() }()

	// The faults, on their schedule.
	var windows []faultWindow
	var schedErr error
	var kill time.Time
	var burst *p0Burst
	schedDone := make(chan struct{})
	go func() {
		defer close(schedDone)
		mark := func(name string, from time.Time) {
			windows = append(windows, faultWindow{Name: name, from: from, to: time.Now()})
			logf("%s: from %s for %s", name, from.Format("15:04:05.000"), time.Since(from).Round(time.Millisecond))
		}
		wait := func(d time.Duration) bool { return peakdesk.Sleep(loadCtx, d) == nil }
		restartKilled := func(name, roles string) error {
			procsMu.Lock()
			p := procs[name]
			procsMu.Unlock()
			if roles == roleWorker {
				// A burst of p0 messages, then the kill once the victim
				// holds some of them (or 5 s have passed).
				burst = startP0Burst(ctx, edgeURL, []byte(secret), drillShop, 12, cfg.Deadline)
				for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
					if burst.held = p.inflight(loadCtx); burst.held >= 2 {
						break
					}
					if !wait(10 * time.Millisecond) {
						return nil
					}
				}
			}
			from := time.Now()
			p.kill()
			if roles == roleWorker {
				kill = from
			}
			if !wait(cfg.RestartAfter) {
				return nil
			}
			if err := startProc(name, roles); err != nil {
				return err
			}
			mark(map[string]string{roleWorker: faultWorkerKill, roleRelay: faultRelayKill}[roles], from)
			return nil
		}
		steps := []func() error{
			func() error { return restartKilled("worker-2", roleWorker) },
			func() error { return restartKilled("relay-1", roleRelay) },
			func() error {
				from := time.Now()
				if err := pg.ctl(ctx, "restart"); err != nil {
					return err
				}
				mark(faultPGRestart, from)
				return nil
			},
			func() error {
				from := time.Now()
				rds.stop()
				wait(cfg.RedisDown)
				if err := rds.start(ctx); err != nil {
					return err
				}
				mark(faultRedisStop, from)
				return nil
			},
			func() error {
				from := time.Now()
				down := llmUp
				down.Outage = true
				llm.SetFaults(down)
				wait(cfg.LLMDown)
				llm.SetFaults(llmUp)
				mark(faultLLMOutage, from)
				return nil
			},
			func() error {
				from := time.Now()
				shop.SetFaults(shopsim.Faults{Down: true})
				wait(cfg.ShopDown)
				shop.SetFaults(shopUp)
				mark(faultShopDown, from)
				return nil
			},
		}
		if !wait(cfg.Warmup) {
			return
		}
		for i, step := range steps {
			if len(cfg.Only) > 0 && !slices.Contains(cfg.Only, faultKeys[i]) {
				continue
			}
			if err := step(); err != nil {
				schedErr = err
				cancelLoad()
				return
			}
			if !wait(cfg.Gap) {
				return
			}
		}
	}()

	rep, err := loadtest.RunLoad(loadCtx, loadtest.LoadConfig{
		BaseURL: edgeURL, Secret: []byte(secret), Shop: drillShop, Scenario: loadtest.ScenarioSteady,
		Rate: cfg.Rate, Duration: planned + 10*time.Second, Conversations: 60,
		Mix: loadtest.LoadMix{P0: 1, P1: 2, P2: 2}, Follow: loadtest.LoadFollowSSE,
		Deadline: cfg.Deadline, Linger: 3 * time.Second, Seed: time.Now().UnixNano(),
		Logger: slog.New(slog.NewTextHandler(cfg.Log, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	<-schedDone
	cancelLoad()
	refundWG.Wait()
	switch {
	case schedErr != nil:
		return nil, schedErr
	case err != nil:
		return nil, err
	}
	res = &faultsResult{Load: rep, Faults: windows}

	// Every refund request answered, every refund action carried out: wait
	// for them (the relay's backoff after the shop outage), then compare
	// with what the shop applied.
	if err := refunds.await(ctx, time.Now().Add(cfg.Deadline)); err != nil {
		return nil, err
	}
	res.Refunds, err = checkRefunds(ctx, db, shop, refunds, drillShop, time.Now().Add(cfg.Deadline))
	if err != nil {
		return nil, err
	}
	if burst != nil {
		res.P0Burst = burst.wait()
	}
	stopDesk()
	deskWG.Wait()
	res.HandedBack = int(handedBack.Load())
	res.measure(cfg, kill, shop.Effects())
	return res, nil
}

// roundRobin proxies requests to the edges in turn; event streams are
// flushed as they come.
func roundRobin(addrs ...string) http.Handler {
	var n atomic.Uint64
	targets := make([]*url.URL, len(addrs))
	for i, a := range addrs {
		targets[i] = &url.URL{Scheme: "http", Host: a}
	}
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(targets[(n.Add(1)-1)%uint64(len(targets))])
			r.Out.Host = r.In.Host
		},
		FlushInterval: -1,
		ErrorLog:      nil,
	}
}

// measure fills the figures of every fault window from the load's
// per-second series.
func (r *faultsResult) measure(cfg faultsConfig, kill time.Time, effects []shopsim.Effect) {
	series := r.Load.Series
	start := r.Load.StartedAt
	sec := func(t time.Time) float64 { return t.Sub(start).Seconds() }
	idx := func(t time.Time) int { return max(int(t.Sub(start)/time.Second), 0) }
	worst := func(s loadtest.LoadSecond, prios ...string) (p99 float64, n int64) {
		for k, l := range s.Answer {
			if len(prios) == 0 || slices.Contains(prios, k) {
				p99, n = max(p99, l.P99), n+l.Count
			}
		}
		return p99, n
	}
	// The normal bound, from the warmup (its first two seconds left out:
	// the caches are cold).
	warm := 0.0
	firstFault := start.Add(cfg.Warmup)
	if len(r.Faults) > 0 {
		firstFault = r.Faults[0].from
	}
	for i := 2; i < min(idx(firstFault), len(series)); i++ {
		p, _ := worst(series[i])
		warm = max(warm, p)
	}
	r.NormalP99 = max(2*warm, 1000)

	for i := range r.Faults {
		w := &r.Faults[i]
		w.From, w.To = loadRound3(sec(w.from)), loadRound3(sec(w.to))
		from, to, end := idx(w.from), idx(w.to), idx(w.to.Add(cfg.Gap))
		backlogBefore := 0
		if from > 0 && from-1 < len(series) {
			backlogBefore = series[from-1].Backlog
		}
		w.FirstAnswerAfter, w.RecoveredAfter = -1, -1
		for j := from; j < min(end, len(series)); j++ {
			s := series[j]
			p, _ := worst(s)
			w.P99During = max(w.P99During, p)
			w.AnsweredDuring += s.Answered
			w.RefusedDuring += s.Rejected + s.Errors
		}
		for j := to; j < len(series); j++ {
			s := series[j]
			if s.Answered > 0 && w.FirstAnswerAfter < 0 {
				w.FirstAnswerAfter = max(float64(j)-sec(w.to), 0)
			}
			if p, _ := worst(s); p <= r.NormalP99 && s.Backlog <= backlogBefore+max(3, int(cfg.Rate)) && s.Answered > 0 {
				w.RecoveredAfter = max(float64(j+1)-sec(w.to), 0)
				break
			}
		}
		w.FirstAnswerAfter, w.RecoveredAfter = loadRound3(w.FirstAnswerAfter), loadRound3(w.RecoveredAfter)
		if w.Name == faultShopDown {
			w.RefundEffectAfter = -1
			for _, e := range effects {
				if e.Kind == "refund" && !e.At.Before(w.to) {
					w.RefundEffectAfter = loadRound3(e.At.Sub(w.to).Seconds())
					break
				}
			}
		}
	}
	if !kill.IsZero() {
		for j := idx(kill); j < min(idx(kill.Add(cfg.P0Window))+1, len(series)); j++ {
			p, n := worst(series[j], "p0")
			r.P0KillP99 = max(r.P0KillP99, p)
			r.P0KillCount += n
		}
	}
}

func loadRound3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }

// print writes the figures as a table.
func (r *faultsResult) print(w io.Writer) {
	rep := r.Load
	fmt.Fprintf(w, "load\t%d offered, %d accepted, %d answered, %d lost, %d duplicated replies, %d redeliveries; refused %v %v\n",
		rep.Offered, rep.Accepted, rep.Answered, rep.Lost, rep.Duplicates, rep.Redeliveries, rep.Rejected, rep.Errors)
	for _, k := range []string{"all", "p0", "p1", "p2"} {
		if l, ok := rep.Latency.ByPriority[k]; ok {
			fmt.Fprintf(w, "answer %s\tp50 %.0f ms, p99 %.0f ms, max %.0f ms (%d)\n", k, l.Answer.P50, l.Answer.P99, l.Answer.Max, l.Answer.Count)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\tfrom s\tfor s\tanswered\trefused\tp99 during ms\tfirst answer after s\trecovered after s")
	for _, f := range r.Faults {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%d\t%d\t%.0f\t%.0f\t%.0f\n", f.Name, f.From, f.To-f.From, f.AnsweredDuring, f.RefusedDuring,
			f.P99During, f.FirstAnswerAfter, f.RecoveredAfter)
	}
	tw.Flush()
	fmt.Fprintf(w, "handed to a human\t%d conversations, handed back to the bot by the drill's agent\n", r.HandedBack)
	fmt.Fprintf(w, "normal second\tp99 ≤ %.0f ms (twice the warmup's worst)\n", r.NormalP99)
	fmt.Fprintf(w, "p0 around the worker SIGKILL\tp99 ≤ %.0f ms over %d answers (target ≤ %s)\n", r.P0KillP99, r.P0KillCount, p0KillTarget)
	b := r.P0Burst
	fmt.Fprintf(w, "p0 burst at the worker SIGKILL\t%d sent, %d answered, the victim held %d messages; answer p50 %.0f ms, p99 %.0f ms, max %.0f ms (target p99 ≤ %s)\n",
		b.Sent, b.Answered, b.Held, b.P50, b.P99, b.Max, p0KillTarget)
	rf := r.Refunds
	fmt.Fprintf(w, "refunds\t%d asked, %d accepted, %d answered (%d granted); %d actions, %d succeeded; the shop applied %d (%d orders twice, %d without an action)\n",
		rf.Asked, rf.Accepted, rf.Answered, rf.Granted, rf.Actions, rf.Succeeded, rf.Effects, rf.DuplicateEffects, rf.Orphans)
	for _, f := range r.Faults {
		if f.Name == faultShopDown {
			fmt.Fprintf(w, "first refund applied after the shop came back\t%.1f s\n", f.RefundEffectAfter)
		}
	}
}

// refundAsker asks for refunds: each a new customer of the simulated shop's
// catalogue ("u<n>", n%4 = 1: one shipped order) about their order.
type refundAsker struct {
	base   string
	secret []byte
	shop   string
	client *http.Client

	mu   sync.Mutex
	asks []*refundAsk
}

type refundAsk struct {
	user, order, token, messageID string
	accepted, answered, granted   bool
}

// run asks one refund every `every` for d.
func (a *refundAsker) run(ctx context.Context, every, d time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 1; time.Now().Before(end); n++ {
		user := fmt.Sprintf("u%d", 4*n+1)
		ask := &refundAsk{user: user, order: shopsim.CustomerOrderIDs(user)[0]}
		a.mu.Lock()
		a.asks = append(a.asks, ask)
		a.mu.Unlock()
		wg.Go(func() { a.post(ctx, ask) })
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// post sends the request; a refused one (the edge down for a moment) is
// sent again with the same client message id, so it is accepted once.
func (a *refundAsker) post(ctx context.Context, ask *refundAsk) {
	tok, err := token.Sign(a.secret, a.shop, ask.user, nil, time.Hour)
	if err != nil {
		return
	}
	ask.token = tok
	body, _ := json.Marshal(map[string]any{"text": fmt.Sprintf("I want a refund for order %s, the item arrived broken", ask.order),
		"client_msg_id": "refund-" + ask.user})
	for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
		var out struct {
			MessageID string `json:"message_id"`
		}
		status, err := a.do(ctx, http.MethodPost, "/v1/messages", tok, body, &out)
		if err == nil && (status == http.StatusAccepted || status == http.StatusOK) && out.MessageID != "" {
			a.mu.Lock()
			ask.accepted, ask.messageID = true, out.MessageID
			a.mu.Unlock()
			return
		}
		if peakdesk.Sleep(ctx, time.Second) != nil {
			return
		}
	}
}

func (a *refundAsker) do(ctx context.Context, method, path, tok string, body []byte, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 && out != nil {
		err = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode, err
}

// await polls every accepted request until it is answered or deadline.
func (a *refundAsker) await(ctx context.Context, deadline time.Time) error {
	a.mu.Lock()
	asks := slices.Clone(a.asks)
	a.mu.Unlock()
	for _, ask := range asks {
		if !ask.accepted {
			continue
		}
		for !ask.answered && time.Now().Before(deadline) {
			var st struct {
				Status string `json:"status"`
				Reply  *struct {
					Text string `json:"text"`
				} `json:"reply"`
			}
			status, err := a.do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(ask.messageID), ask.token, nil, &st)
			if err == nil && status == http.StatusOK && st.Status == "answered" && st.Reply != nil {
				ask.answered = true
				ask.granted = strings.Contains(st.Reply.Text, "has been requested")
				break
			}
			if err := peakdesk.Sleep(ctx, 250*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkRefunds waits until every refund action of the shop is done (or
// deadline) and compares them with the refunds the shop applied.
func checkRefunds(ctx context.Context, db *storage.DB, sim *shopsim.Sim, a *refundAsker, shopID string, deadline time.Time) (refundCheck, error) {
	var rc refundCheck
	for _, ask := range a.asks {
		rc.Asked++
		if ask.accepted {
			rc.Accepted++
		}
		switch {
		case ask.answered:
			rc.Answered++
		case ask.accepted:
			rc.Unanswered = append(rc.Unanswered, ask.user+":"+ask.messageID)
		}
		if ask.granted {
			rc.Granted++
		}
	}
	filter := storage.ActionFilter{Kind: peakdesk.ActionRefundRequest, Shop: shopID}
	var actions []peakdesk.Action
	for {
		var err error
		actions, err = db.ListActions(ctx, shopID, filter, 0, 10_000)
		if err != nil {
			return rc, err
		}
		done := !slices.ContainsFunc(actions, func(x peakdesk.Action) bool { return x.State != peakdesk.ActionSucceeded })
		if done || time.Now().After(deadline) {
			break
		}
		if err := peakdesk.Sleep(ctx, 500*time.Millisecond); err != nil {
			return rc, err
		}
	}
	orders := map[string]int{} // order → refunds applied
	for _, e := range sim.Effects() {
		if e.Kind != "refund" || e.Shop != shopID {
			continue
		}
		var body struct {
			OrderID string `json:"order_id"`
		}
		_ = json.Unmarshal(e.Body, &body)
		orders[body.OrderID]++
		rc.Effects++
	}
	acted := map[string]bool{}
	for _, x := range actions {
		rc.Actions++
		if x.State == peakdesk.ActionSucceeded {
			rc.Succeeded++
		} else {
			rc.Unfinished = append(rc.Unfinished, fmt.Sprintf("%d:%s", x.ID, x.State))
		}
		var p struct {
			OrderID string `json:"order_id"`
		}
		_ = json.Unmarshal(x.Payload, &p)
		acted[p.OrderID] = true
	}
	for o, n := range orders {
		if n > 1 {
			rc.DuplicateEffects++
		}
		if !acted[o] {
			rc.Orphans++
		}
	}
	return rc, nil
}

// p0Burst is a burst of p0 messages, each in a conversation of its own,
// followed to their answers by polling (every 50 ms).
type p0Burst struct {
	wg   sync.WaitGroup
	held int
	mu   sync.Mutex
	res  p0BurstResult
	lat  []time.Duration
}

// p0BurstResult is what became of a p0 burst. Latencies are POST sent →
// answer seen, in milliseconds.
type p0BurstResult struct {
	Sent     int `json:"sent"`
	Accepted int `json:"accepted"`
	Answered int `json:"answered"`
	// Held is what the killed worker was answering when it died.
	Held int     `json:"victim_held"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
}

// startP0Burst sends n p0 messages at once and follows them for at most
// deadline.
func startP0Burst(ctx context.Context, base string, secret []byte, shop string, n int, deadline time.Duration) *p0Burst {
	b := &p0Burst{}
	a := &refundAsker{base: base, secret: secret, shop: shop, client: &http.Client{Timeout: 10 * time.Second}}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	var all sync.WaitGroup
	for i := range n {
		all.Go(func() {
			user := fmt.Sprintf("p0-burst-%d", i)
			tok, err := token.Sign(secret, shop, user, []string{"priority:urgent"}, time.Hour)
			if err != nil {
				return
			}
			body, _ := json.Marshal(map[string]any{"priority": "p0",
				"text": fmt.Sprintf("Hi, my parcel number %d is late and I need help urgently, what can you do?", i)})
			sent := time.Now()
			b.mu.Lock()
			b.res.Sent++
			b.mu.Unlock()
			var out struct {
				MessageID string `json:"message_id"`
			}
			if status, err := a.do(ctx, http.MethodPost, "/v1/messages", tok, body, &out); err != nil ||
				(status != http.StatusAccepted && status != http.StatusOK) || out.MessageID == "" {
				return
			}
			b.mu.Lock()
			b.res.Accepted++
			b.mu.Unlock()
			for peakdesk.Sleep(ctx, 50*time.Millisecond) == nil {
				var st struct {
					Status string `json:"status"`
				}
				if status, err := a.do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(out.MessageID), tok, nil, &st); err == nil &&
					status == http.StatusOK && st.Status == "answered" {
					b.mu.Lock()
					b.res.Answered++
					b.lat = append(b.lat, time.Since(sent))
					b.mu.Unlock()
					return
				}
			}
		})
	}
	b.wg.Go(func() { all.Wait(); cancel() })
	return b
}

// wait waits for every message of the burst and returns the figures.
func (b *p0Burst) wait() p0BurstResult {
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.res
	r.Held = b.held
	slices.Sort(b.lat)
	at := func(q float64) float64 {
		if len(b.lat) == 0 {
			return 0
		}
		i := min(int(q*float64(len(b.lat))+0.999999)-1, len(b.lat)-1)
		return float64(b.lat[max(i, 0)].Milliseconds())
	}
	r.P50, r.P99, r.Max = at(0.5), at(0.99), at(1)
	return r
}
