package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// The multi-process fault drill, short (about 90 s): 2 ingest, 3 worker
// and 2 relay processes (this test binary in child mode) on a Postgres and
// a Redis of the drill's own, under steady load and refund requests, while
// a worker and a relay are SIGKILLed, Postgres restarts, Redis, the LLM
// and the shop API are down for a few seconds each. Nothing may be lost or
// duplicated: no message, no reply, no refund at the shop. `make
// drill-faults` runs the long version with minute-long outages.
func TestFaultDrill(t *testing.T) {
	var logs syncBuffer
	cfg := shortFaultsConfig(&logs)
	cfg.Command = func(roles string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+roles)
		return cmd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := drillFaults(ctx, cfg)
	if err != nil {
		t.Fatalf("drill: %v\n%s", err, logs.tail())
	}
	var out bytes.Buffer
	res.print(&out)
	t.Logf("figures (short version, shared machine):\n%s", out.String())
	if problem := res.problem(); problem != "" {
		t.Errorf("%s\n%s", problem, logs.tail())
	}
	if len(res.Faults) != 6 {
		t.Errorf("%d faults injected, want 6: %+v", len(res.Faults), res.Faults)
	}
	// The drill must have exercised the outbox, or its "0 duplicated
	// effects" says nothing.
	if res.Refunds.Succeeded == 0 {
		t.Errorf("no refund reached the shop: %+v", res.Refunds)
	}
	if res.P0KillCount == 0 {
		t.Errorf("no p0 answer after the worker SIGKILL")
	}
}

// syncBuffer is a log buffer the drill's goroutines write to at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// tail is the last lines of the log, for a failure message.
func (s *syncBuffer) tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := strings.Split(s.b.String(), "\n")
	return strings.Join(lines[max(0, len(lines)-60):], "\n")
}
