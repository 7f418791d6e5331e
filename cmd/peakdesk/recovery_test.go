package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
)

// Crash recovery (issue 16): a dead worker's urgent messages come back
// after p0's short AckWait, not the others'; a stopped worker hands its
// messages back at once. Both keep every message answered exactly once.

// sentMsg is a message a recovery test sent.
type sentMsg struct{ id, user string }

// sendConversations posts perConv messages in each of convs conversations
// (in parallel across conversations) with the given priority hint; with
// prio empty the server classifies them.
func sendConversations(t *testing.T, base string, convs, perConv int, prio string) []sentMsg {
	t.Helper()
	var mu sync.Mutex
	var all []sentMsg
	var wg sync.WaitGroup
	for c := range convs {
		wg.Go(func() {
			user := fmt.Sprintf("user-%s-%02d", prio, c)
			var scopes []string
			if prio != "" {
				scopes = []string{"priority:urgent"}
			}
			tok := bearer(t, "demo", user, scopes...)
			conv := ""
			for j := range perConv {
				req := map[string]any{"text": fmt.Sprintf("conv %d question %d: 双11满减怎么算？", c, j)}
				if prio != "" {
					req["priority"] = prio
				}
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
				all = append(all, sentMsg{id: r.body["message_id"].(string), user: user})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return all
}

// waitLLMInFlight waits until the simulated LLM has more than n calls in
// flight.
func waitLLMInFlight(t *testing.T, b *testBundle, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for b.llm.Stats().InFlight <= n {
		if time.Now().After(deadline) {
			t.Fatalf("never more than %d LLM calls in flight (want > %d)", b.llm.Stats().InFlight, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// assertAnsweredOnce checks that every message in all has exactly one
// distinct reply in CHAT_EVENTS and is answered and linked in Postgres.
func assertAnsweredOnce(t *testing.T, b *testBundle, all []sentMsg) {
	t.Helper()
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
}

// Two worker processes answer p0 messages; one is SIGKILLed in the middle of
// its LLM calls. The p0 consumer's AckWait is 2 s, the other consumers' a
// minute: the dead worker's p0 messages (and those that waited for its
// conversations) are answered long before a minute has passed — with the
// AckWait of the other priorities, as before, they would not be — and each
// exactly once.
func TestWorkerKilledItsUrgentMessagesComeBackAfterTheP0AckWait(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: time.Second, LatencyJitter: 200 * time.Millisecond})
	const ackWait, ackWaitP0 = time.Minute, 2 * time.Second
	edge := b.start(t, []string{roleIngest}, func(c *Config) { c.AckWait, c.AckWaitP0 = ackWait, ackWaitP0 })
	base := "http://" + edge.Addr()
	env := []string{"PEAKDESK_ACK_WAIT=" + ackWait.String(), "PEAKDESK_ACK_WAIT_P0=" + ackWaitP0.String(),
		"PEAKDESK_WORKER_CONCURRENCY=8"}
	victim := b.startChildWorker(t, "victim", env...)
	b.startChildWorker(t, "survivor", env...)

	// 20 conversations of 2 messages: more than both workers hold at once,
	// and some wait for their conversation while the victim answers it.
	all := sendConversations(t, base, 20, 2, "p0")
	waitLLMInFlight(t, b, 8) // both workers are busy: some calls are the victim's
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.done
	killed := time.Now()

	// Well within the minute the other priorities' messages would wait.
	deadline := killed.Add(ackWait / 2)
	for _, m := range all {
		waitAnswered(t, base, bearer(t, "demo", m.user), m.id, deadline)
	}
	t.Logf("every p0 message answered %v after the kill (p0 AckWait %v)", time.Since(killed).Round(time.Millisecond), ackWaitP0)
	assertAnsweredOnce(t, b, all)
	if cut := b.llm.Stats().ByStatus[499]; cut == 0 {
		t.Errorf("no LLM call was cut off by the kill; stats %+v", b.llm.Stats().ByStatus)
	}
}

// A worker process gets SIGTERM (a rolling deploy) while its LLM calls are
// in flight: it hands its messages back at once (nak), and another worker
// answers them, exactly once, although their AckWait is a minute.
func TestWorkerStoppedHandsItsMessagesBackAtOnce(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 5 * time.Second})
	const ackWait = time.Minute
	mod := func(c *Config) { c.AckWait, c.AckWaitP0 = ackWait, ackWait }
	edge := b.start(t, []string{roleIngest}, mod)
	base := "http://" + edge.Addr()
	env := []string{"PEAKDESK_ACK_WAIT=" + ackWait.String(), "PEAKDESK_ACK_WAIT_P0=" + ackWait.String(),
		"PEAKDESK_WORKER_CONCURRENCY=8"}
	victim := b.startChildWorker(t, "victim", env...)

	// The victim alone takes every message; then a second worker starts,
	// with nothing left to pull.
	all := sendConversations(t, base, 8, 1, "p1")
	waitLLMInFlight(t, b, 7)
	b.start(t, []string{roleWorker}, mod)
	if err := victim.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-victim.done
	if code := victim.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the stopped worker exited with %d", code)
	}

	// Within the minute of their AckWait only a nak brings them back.
	deadline := time.Now().Add(ackWait / 2)
	for _, m := range all {
		waitAnswered(t, base, bearer(t, "demo", m.user), m.id, deadline)
	}
	assertAnsweredOnce(t, b, all)
	if cut := b.llm.Stats().ByStatus[499]; cut == 0 {
		t.Errorf("the stop cut no LLM call off: it waited for them; stats %+v", b.llm.Stats().ByStatus)
	}
}
