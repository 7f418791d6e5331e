package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// benchAnswers measures docs/performance.md's "answers/s end to end with the LLM
// at 0 ms" beside the bare path of the same messages, in one run:
//
//   - end to end: the edge, workers and relay in this process with an
//     embedded JetStream, Postgres and Redis on the machine, the simulated
//     LLM (0 ms) and shop API; the load test's burst (`peakdesk loadtest
//     --scenario burst`, in a child process so its CPU is its own) with the
//     shop's limits raised and admission control off, so nothing is shed.
//     The rate is the accepted messages over the time from the first offer
//     until the last is answered.
//   - bare path: the same number of message payloads in a stream of their
//     own, pulled by as many consumers as the worker has slots, one
//     Postgres row each (its own transaction), acked: the floor of "JetStream
//     → Postgres → ack" here.
//
// Beside each rate, the CPU µs per answer by process: peakdesk (edge,
// workers, relay, embedded JetStream, the simulators), postgres (the
// backends of its database and the server's own processes), redis, and the
// load client.
func benchAnswers(ctx context.Context, getenv func(string) string, logw io.Writer, n int) ([]benchRow, error) {
	dir, err := os.MkdirTemp("", "peakdesk-bench-answers-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ns, err := queue.StartNATS(queue.NATSServerConfig{StoreDir: dir, Port: -1})
	if err != nil {
		return nil, err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

	// The simulated LLM at 0 ms, in a process of its own (the provider is
	// not peakdesk: its CPU is counted apart), and the simulated shop API.
	llmURL, llmPid, stopLLM, err := benchLLMProcess(ctx)
	if err != nil {
		return nil, err
	}
	defer stopLLM()
	shopURL, stopShop, err := benchServe(shopsim.New(shopsim.Faults{}, []byte("bench-webhook-secret")))
	if err != nil {
		return nil, err
	}
	defer stopShop()

	cfg := envDefaults(getenv, false)
	cfg.Roles = []string{roleIngest, roleWorker, roleRelay}
	cfg.NATSURL = ns.ClientURL()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.JWTSecret = cmp.Or(cfg.JWTSecret, devSecret)
	cfg.MasterKey = cmp.Or(cfg.MasterKey, devMasterKeyHex()) // a key is required; the scratch database holds no sealed secrets
	cfg.LLMBaseURL = llmURL + "/v1"
	cfg.ShopAPIURL = shopURL
	cfg.AllowPrivateShopURLs = true
	cfg.Migrate = true
	cfg.LogLevel = "error"
	cfg.AdmissionDisabled = true // nothing is shed
	p := NewProgram(cfg, logw)
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	defer p.Stop()
	shop := "bench-" + strconv.FormatInt(time.Now().Unix(), 36)
	if err := p.db.EnsureShop(ctx, shop, "bench"); err != nil {
		return nil, err
	}
	if err := p.db.SetShopLimits(ctx, shop, 10_000_000, 10_000_000, 10_000_000, 10_000_000); err != nil {
		return nil, err
	}
	if err := p.db.SetShopLLMLimits(ctx, storage.LLMLimits{ShopID: shop}); err != nil {
		return nil, err
	}
	meter := newProcMeter(p, cfg.DatabaseURL)
	meter.llmPid = llmPid

	// End to end.
	calls0, err := llmRequests(ctx, llmURL)
	if err != nil {
		return nil, err
	}
	meter.start(ctx)
	e2e, err := benchEndToEnd(ctx, p, cfg, shop, n, dir)
	if err != nil {
		return nil, err
	}
	calls1, err := llmRequests(ctx, llmURL)
	if err != nil {
		return nil, err
	}
	e2eCPU := meter.perMsg(ctx, e2e.answered)
	e2eCPU.client = e2e.clientCPU.Seconds() * 1e6 / float64(max(e2e.answered, 1))
	fmt.Fprintf(logw, "bench: end to end: %d accepted, %d answered in %v (%d lost, %d duplicates)\n",
		e2e.accepted, e2e.answered, e2e.elapsed.Round(time.Millisecond), e2e.lost, e2e.duplicates)
	if e2e.lost > 0 || e2e.duplicates > 0 {
		return nil, fmt.Errorf("bench: end to end: %d lost, %d duplicates", e2e.lost, e2e.duplicates)
	}

	// The bare path, the same number of messages.
	meter.start(ctx)
	bare, err := benchBarePath(ctx, p, shop, e2e.answered, cfg.WorkerConcurrency)
	if err != nil {
		return nil, err
	}
	bareCPU := meter.perMsg(ctx, e2e.answered)

	// The LLM client alone, as many calls as the answers made.
	callsPerAnswer := float64(calls1-calls0) / float64(max(e2e.answered, 1))
	llmCall, err := benchLLMClient(ctx, llmURL, llm.ParseModels(cfg.LLMModel)[0], p.worker.Tools(), max(int(calls1-calls0), 100),
		cfg.WorkerConcurrency)
	if err != nil {
		return nil, err
	}

	rate := float64(e2e.answered) / e2e.elapsed.Seconds()
	rows := []benchRow{{
		Scenario: "answers/s, LLM at 0 ms, end to end", Measured: fmt.Sprintf("burst of %d", e2e.accepted),
		Value: rate, Baseline: "bare path: pull, 1 row, ack", Base: bare, Unit: "msg/s",
		CPU: e2eCPU.total(), BaseCPU: bareCPU.total(), Ratio: rate / bare, Target: 0.3,
	}, {
		Scenario: "answers/s, LLM at 0 ms, end to end", Measured: fmt.Sprintf("burst of %d", e2e.accepted),
		Value: rate, Baseline: "1,000 answers/s", Base: 1000, Unit: "msg/s", Ratio: rate / 1000, Target: 1,
	}}
	for i := range rows {
		rows[i].Pass = rows[i].Ratio >= rows[i].Target
	}
	rows[0].Split = fmt.Sprintf("CPU by process, end to end µs/answer: %s; bare path: %s", e2eCPU, bareCPU)
	// What 1,000 answers/s leaves per answer on this machine, against what
	// the parts no pipeline can do without cost here, each measured apart.
	floor := e2eCPU.client + e2eCPU.llm + bareCPU.total() + llmCall*callsPerAnswer
	rows[1].Split = fmt.Sprintf("%.0f answers/s on %d CPUs leaves %.0f µs of CPU per answer; measured apart in this run: "+
		"load client %.0f + LLM simulator %.0f + bare path %.0f + LLM client %.0f µs/call × %.2f calls/answer = %.0f µs "+
		"before the edge (HTTP, auth, rate limit, publish), the claim, the reply and its delivery",
		rows[1].Base, runtime.NumCPU(), float64(runtime.NumCPU())*1e6/rows[1].Base, e2eCPU.client, e2eCPU.llm, bareCPU.total(), llmCall, callsPerAnswer, floor)
	return rows, nil
}

// benchServe serves h on a free loopback port.
func benchServe(h http.Handler) (base string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// e2eResult is what the end-to-end run saw.
type e2eResult struct {
	accepted, answered, lost, duplicates int
	elapsed                              time.Duration
	clientCPU                            time.Duration
}

// benchEndToEnd runs the load test's burst of n messages over n/2
// conversations against p in a child process and returns how long it took
// from the first offer until every accepted message was answered (by the
// worker's answer counter, sampled every 20 ms).
func benchEndToEnd(ctx context.Context, p *Program, cfg Config, shop string, n int, dir string) (e2eResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return e2eResult{}, err
	}
	reportPath := filepath.Join(dir, "load.json")
	cmd := exec.CommandContext(ctx, exe, "loadtest", "--url", "http://"+p.Addr(), "--secret", cfg.JWTSecret,
		"--shop", shop, "--scenario", "burst", "--messages", strconv.Itoa(n), "--within", "2s",
		"--conversations", strconv.Itoa(max(n/2, 1)), "--concurrency", "256", "--deadline", "90s",
		"--linger", "500ms", "--json", reportPath)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	before := p.worker.Answered()
	var answered atomic.Int64
	var lastChange atomic.Int64 // unix nanos of the last sample that saw a new answer
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				if a := p.worker.Answered() - before; a != answered.Load() {
					answered.Store(a)
					lastChange.Store(now.UnixNano())
				}
			}
		}
	})
	start := time.Now()
	runErr := cmd.Run()
	close(stop)
	wg.Wait()
	var rep loadtest.LoadReport
	b, err := os.ReadFile(reportPath)
	if err != nil {
		return e2eResult{}, fmt.Errorf("bench: load test: %w (%v)", err, runErr)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return e2eResult{}, fmt.Errorf("bench: load report: %w", err)
	}
	res := e2eResult{accepted: rep.Accepted, answered: rep.Answered, lost: rep.Lost, duplicates: rep.Duplicates,
		elapsed: time.Unix(0, lastChange.Load()).Sub(start)}
	if cmd.ProcessState != nil {
		res.clientCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if rep.Accepted == 0 {
		return res, fmt.Errorf("bench: load test accepted nothing (%v)", runErr)
	}
	return res, nil
}

// benchBarePath publishes n message payloads to a stream of its own (not
// timed), then times conc consumers pulling them, writing one Postgres row
// per message and acking, until all n are done.
func benchBarePath(ctx context.Context, p *Program, shop string, n, conc int) (float64, error) {
	const stream, subject = "BENCH_BARE", "bench.bare.>"
	if _, err := p.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{subject},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}); err != nil {
		return 0, err
	}
	defer func() { _ = p.js.DeleteStream(context.WithoutCancel(ctx), stream) }()
	js, err := jetstream.New(p.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return 0, err
	}
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%032x", i)
		m := peakdesk.Message{ID: ids[i], ShopID: shop, ConversationID: fmt.Sprintf("%032x", i/2),
			UserID: fmt.Sprintf("user-%05d", i/2), Text: "双11满减怎么算？买两件能叠加优惠券吗？", Priority: peakdesk.P2,
			AcceptedAt: time.Now().UTC()}
		body, _ := json.Marshal(m)
		msg := nats.NewMsg("bench.bare." + shop)
		msg.Data = body
		if _, err := js.PublishMsgAsync(msg); err != nil {
			return 0, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	cons, err := p.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{Durable: "bare",
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 100_000})
	if err != nil {
		return 0, err
	}
	bare, err := p.db.OpenBenchBare(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = bare.Close(context.WithoutCancel(ctx)) }()

	var done atomic.Int64
	var failed atomic.Bool // the first error ends every consumer
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for done.Load() < int64(n) && ctx.Err() == nil && !failed.Load() {
				batch, err := cons.Fetch(8, jetstream.FetchMaxWait(200*time.Millisecond))
				if err != nil {
					errOnce.Do(func() { firstErr = err; failed.Store(true) })
					return
				}
				for msg := range batch.Messages() {
					var m peakdesk.Message
					if err := json.Unmarshal(msg.Data(), &m); err != nil || m.ID == "" {
						errOnce.Do(func() { firstErr = fmt.Errorf("a message without its id: %v", err); failed.Store(true) })
						return
					}
					if err := bare.Insert(ctx, m.ShopID, m.ID, msg.Data()); err != nil {
						errOnce.Do(func() { firstErr = err; failed.Store(true) })
						return
					}
					if err := msg.Ack(); err != nil {
						errOnce.Do(func() { firstErr = err; failed.Store(true) })
						return
					}
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return 0, fmt.Errorf("bench: bare path: %w", firstErr)
	}
	// One row per message, or the floor measured was something else.
	if rows, err := bare.Rows(ctx); err != nil || rows != n {
		return 0, fmt.Errorf("bench: bare path wrote %d rows for %d messages (%v)", rows, n, err)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// procMeter measures the CPU time by process: this one, the Postgres
// server (its background processes and the backends of our database), and
// Redis.
type procMeter struct {
	p       *Program
	dbName  string
	self    time.Duration
	pg      map[int]float64
	redis   float64
	llmPid  int // the LLM simulator's process, 0 for none
	llm     float64
	clkTck  float64
	started time.Time
}

// cpuSplit is CPU µs per message by process.
type cpuSplit struct{ peakdesk, postgres, redis, llm, client float64 }

// total is the whole box's CPU per message, the simulators' and the load
// client's included (they share the box).
func (s cpuSplit) total() float64 { return s.peakdesk + s.postgres + s.redis + s.llm + s.client }

func (s cpuSplit) String() string {
	out := fmt.Sprintf("peakdesk %.0f, postgres %.0f, redis %.0f", s.peakdesk, s.postgres, s.redis)
	if s.llm > 0 {
		out += fmt.Sprintf(", llm simulator %.0f", s.llm)
	}
	if s.client > 0 {
		out += fmt.Sprintf(", load client %.0f", s.client)
	}
	return out
}

func newProcMeter(p *Program, dbURL string) *procMeter {
	name := "peakdesk"
	if u, err := url.Parse(dbURL); err == nil {
		name = cmp.Or(strings.TrimPrefix(u.Path, "/"), name)
	}
	return &procMeter{p: p, dbName: name, clkTck: 100}
}

func (m *procMeter) start(ctx context.Context) {
	m.self, m.pg, m.redis = processCPU(), postgresCPU(m.dbName, m.clkTck), redisCPU(ctx, m.p.rdb)
	if m.llmPid > 0 {
		m.llm, _ = pidCPU(m.llmPid, m.clkTck)
	}
}

func (m *procMeter) perMsg(ctx context.Context, n int) cpuSplit {
	per := func(sec float64) float64 { return sec * 1e6 / float64(max(n, 1)) }
	var pg float64
	for pid, sec := range postgresCPU(m.dbName, m.clkTck) {
		pg += sec - m.pg[pid] // a backend new since start counts from 0
	}
	var llm float64
	if m.llmPid > 0 {
		if sec, ok := pidCPU(m.llmPid, m.clkTck); ok {
			llm = sec - m.llm
		}
	}
	return cpuSplit{
		peakdesk: per((processCPU() - m.self).Seconds()),
		postgres: per(pg),
		redis:    per(redisCPU(ctx, m.p.rdb) - m.redis),
		llm:      per(llm),
	}
}

// pidCPU returns the CPU seconds so far of process pid, from /proc.
func pidCPU(pid int, clkTck float64) (float64, bool) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, false
	}
	s := string(stat)
	closing := strings.LastIndexByte(s, ')')
	if closing < 0 {
		return 0, false
	}
	fields := strings.Fields(s[closing+1:])
	if len(fields) < 13 {
		return 0, false
	}
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / clkTck, true
}

// benchLLMProcess starts the LLM simulator (peakdesk mockllm, 0 ms) as a
// child process on a port the kernel picks, and returns its base URL once
// it listens (it says where on its first line of output).
func benchLLMProcess(ctx context.Context) (base string, pid int, stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return "", 0, nil, err
	}
	cmd := exec.Command(exe, "mockllm", "--http-addr", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", 0, nil, err
	}
	cmd.Stderr = io.Discard
	cmd.SysProcAttr = childProcAttr() // dies with the bench, even a SIGKILLed one
	if err := cmd.Start(); err != nil {
		return "", 0, nil, fmt.Errorf("bench: start the LLM simulator: %w", err)
	}
	listening := make(chan string, 1)
	exited := make(chan struct{})
	go func() {
		// Read everything it writes (a full pipe would block it), then
		// reap it: Wait closes the pipe, so it comes after the reading.
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), mockLLMListening); ok {
				select {
				case listening <- strings.TrimSpace(line):
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		close(exited)
	}()
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	select {
	case base := <-listening:
		return base, cmd.Process.Pid, stop, nil
	case <-exited:
		return "", 0, nil, errors.New("bench: the LLM simulator exited at start")
	case <-ctx.Done():
		stop()
		return "", 0, nil, ctx.Err()
	case <-time.After(15 * time.Second):
		stop()
		return "", 0, nil, errors.New("bench: the LLM simulator did not listen within 15 s")
	}
}

// postgresCPU returns the CPU seconds so far of every Postgres process that
// serves database db or the whole server (background writers, WAL), by pid,
// from /proc. Backends of other databases (other users of the machine) are
// left out.
func postgresCPU(db string, clkTck float64) map[int]float64 {
	out := map[int]float64{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(stat)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open || s[open+1:closing] != "postgres" {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		title := strings.ReplaceAll(string(cmdline), "\x00", " ")
		// A backend's title is "postgres: user database host …"; the
		// server's own processes name their job ("postgres: walwriter").
		if f := strings.Fields(strings.TrimPrefix(title, "postgres: ")); len(f) >= 3 && strings.Contains(f[2], "(") && f[1] != db {
			continue
		}
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 13 {
			continue
		}
		ut, _ := strconv.ParseFloat(fields[11], 64)
		st, _ := strconv.ParseFloat(fields[12], 64)
		out[pid] = (ut + st) / clkTck
	}
	return out
}
