package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// childEnv switches the test binary into a worker process: the multi-process
// tests re-exec themselves with it set.
const childEnv = "PEAKDESK_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "worker" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, []string{"serve", "--roles", roleWorker}, os.Stdout, os.Stderr, os.Getenv)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childWorker is a worker role running in its own process.
type childWorker struct {
	cmd  *exec.Cmd
	addr string // where it serves its API
	done chan struct{}
}

// startChildWorker runs `peakdesk serve --roles worker` in a new process
// against b's services and waits until it listens.
func (b *testBundle) startChildWorker(t *testing.T, name string, env ...string) *childWorker {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childEnv+"=worker",
		"DATABASE_URL="+b.dbURL,
		"REDIS_URL="+storagetest.RedisURL(),
		"NATS_URL="+b.natsURL,
		"PEAKDESK_HTTP_ADDR=127.0.0.1:0",
		"PEAKDESK_METRICS_ADDR=127.0.0.1:0",
		"PEAKDESK_JWT_SECRET="+testSecret,
		"PEAKDESK_MASTER_KEY="+testMasterKey, // the shops' secrets are sealed under it
		"PEAKDESK_LLM_BASE_URL="+b.llmURL,
		"PEAKDESK_SHOP_API_URL="+b.shopURL,
		"PEAKDESK_ALLOW_PRIVATE_SHOP_URLS=true", // the simulated shop listens on loopback
		"PEAKDESK_LOG_LEVEL=info",
	)
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childWorker{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		// Relay warnings and errors; catch the address it listens on.
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Level, Msg, Addr string
			}
			_ = json.Unmarshal(sc.Bytes(), &line)
			if line.Msg == "peakdesk started" {
				addr <- line.Addr
			}
			if line.Level == "WARN" || line.Level == "ERROR" || line.Level == "" {
				t.Logf("%s: %s", name, sc.Text())
			}
		}
		_ = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	select {
	case c.addr = <-addr:
	case <-c.done:
		t.Fatalf("%s exited before it started", name)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start in 30 s", name)
	}
	return c
}

// Three worker processes share the queue; one is killed with SIGKILL in the
// middle of its LLM calls. Every message is answered exactly once: what
// the dead worker held is redelivered (its queued messages) or swept (the
// messages that waited for its conversations), and a message it answered
// just before dying is not answered again.
func TestWorkerKilledMidCallEveryMessageAnsweredOnce(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: time.Second, LatencyJitter: 200 * time.Millisecond})
	const ackWait = 2 * time.Second
	edge := b.start(t, []string{roleIngest}, func(c *Config) { c.AckWait = ackWait })
	base := "http://" + edge.Addr()
	env := []string{"PEAKDESK_ACK_WAIT=" + ackWait.String(), "PEAKDESK_WORKER_CONCURRENCY=8", "PEAKDESK_SOFT_STOP=2s"}
	var children []*childWorker
	for i := range 3 {
		children = append(children, b.startChildWorker(t, fmt.Sprintf("worker-%d", i), env...))
	}

	// 50 conversations, 4 messages each, sent quickly: some wait for their
	// conversation while another worker answers it.
	const convs, perConv = 50, 4
	type sent struct{ id, user string }
	var mu sync.Mutex
	var all []sent
	var wg sync.WaitGroup
	for c := range convs {
		wg.Go(func() {
			user := fmt.Sprintf("user-%02d", c)
			tok := bearer(t, "demo", user)
			conv := ""
			for j := range perConv {
				req := map[string]any{"text": fmt.Sprintf("conv %d question %d: 双11满减怎么算？", c, j)}
				if conv != "" {
					req["conversation_id"] = conv
				}
				r := call(t, "POST", base+"/v1/messages", tok, jsonBody(t, req))
				if r.status != http.StatusAccepted {
					t.Errorf("post: %d %s", r.status, r.raw)
					return
				}
				conv = r.body["conversation_id"].(string)
				mu.Lock()
				all = append(all, sent{id: r.body["message_id"].(string), user: user})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Kill one worker while it has calls in flight: with more calls in
	// flight than the other two can hold (8 each), some are the victim's.
	victim := children[1]
	deadline := time.Now().Add(30 * time.Second)
	for b.llm.Stats().InFlight <= 2*8 {
		if time.Now().After(deadline) {
			t.Fatalf("never more than %d LLM calls in flight", b.llm.Stats().InFlight)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.done

	deadline = time.Now().Add(90 * time.Second)
	for _, m := range all {
		waitAnswered(t, base, bearer(t, "demo", m.user), m.id, deadline)
	}

	// Exactly once: one distinct reply per message in the event stream and
	// in Postgres.
	events := replyEvents(t, b.natsURL)
	for _, m := range all {
		if n := len(events[m.id]); n != 1 {
			t.Errorf("message %s answered by %d distinct replies in CHAT_EVENTS, want 1", m.id, n)
		}
	}
	conn, err := pgx.Connect(context.Background(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var answered, linked int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE status = 'answered'),
		count(*) FILTER (WHERE reply_id IS NOT NULL) FROM messages`).Scan(&answered, &linked); err != nil {
		t.Fatal(err)
	}
	if answered != len(all) || linked != len(all) {
		t.Errorf("%d messages answered, %d linked to a reply; want %d", answered, linked, len(all))
	}
	// The kill cut calls off mid-way (the simulator saw the clients go).
	if cut := b.llm.Stats().ByStatus[499]; cut == 0 {
		t.Errorf("no LLM call was cut off by the kill; stats %+v", b.llm.Stats().ByStatus)
	}
}
