package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// childEnv switches the test binary into a worker process: the multi-process
// tests re-exec themselves with it set.
const childEnv = "PEAKDESK_TEST_CHILD"

func TestMain(m *testing.M) {
	if roles := os.Getenv(childEnv); roles != "" { // "worker", or the roles of a fault drill's process
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, []string{"serve", "--roles", roles}, os.Stdout, os.Stderr, os.Getenv)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, roles+":", err)
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
	all := sendConversations(t, base, convs, perConv, "")

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

	assertAnsweredOnce(t, b, all)
	// The kill cut calls off mid-way (the simulator saw the clients go).
	if cut := b.llm.Stats().ByStatus[499]; cut == 0 {
		t.Errorf("no LLM call was cut off by the kill; stats %+v", b.llm.Stats().ByStatus)
	}
}
