package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// The NATS cluster drills: peakdesk's roles, each with its own NATS user
// (deploy/k8s/nats/auth.conf) over TLS, on a 3-node JetStream cluster of
// real nats-server processes with every stream replicated three times,
// while a node is killed or the nodes restart one by one under load. Each
// drill checks that every message a client sent was accepted and answered
// (0 lost), by exactly one reply, and stored in CHAT_IN once (0
// duplicated), and prints its figures. `make test` runs a short version;
// `make drill` (PEAKDESK_DRILL=full) the long one.

// drillFull reports whether the long versions run (make drill).
func drillFull() bool { return os.Getenv("PEAKDESK_DRILL") == "full" }

// clusterDrill is a test bundle whose NATS is a secured 3-node cluster.
type clusterDrill struct {
	*testBundle
	cluster *storagetest.NATSCluster
	creds   map[string]string // role → nkey seed file
	edge    *Program
	run     string // makes user names unique: Redis's rate limits outlive a run
}

func startClusterDrill(t *testing.T, workers int) *clusterDrill {
	t.Helper()
	env, creds := storagetest.NATSUsers(t, "ingest", "worker", "relay", "dashboard", "admin")
	c := storagetest.StartNATSCluster(t, storagetest.NATSClusterConfig{
		Include: "../../deploy/k8s/nats/auth.conf", Env: env, TLS: true})
	b := setup(t, llmsim.Faults{Latency: 40 * time.Millisecond, LatencyJitter: 30 * time.Millisecond})
	b.natsURL = c.URL()
	// `peakdesk migrate` as the admin user makes the R3 topology, as the
	// migrate Job of deploy/k8s does; the roles only check it.
	menv := map[string]string{"DATABASE_URL": b.dbURL, "NATS_URL": c.URL(), "NATS_CREDS": creds["admin"],
		"NATS_CA": c.CAFile, "PEAKDESK_STREAM_REPLICAS": "3"}
	var stderr bytes.Buffer
	if err := run(context.Background(), []string{"migrate"}, io.Discard, &stderr,
		func(k string) string { return menv[k] }); err != nil {
		t.Fatalf("migrate: %v\n%s", err, stderr.String())
	}
	d := &clusterDrill{testBundle: b, cluster: c, creds: creds, run: strconv.FormatInt(time.Now().UnixNano(), 36)}
	d.edge = b.start(t, []string{roleIngest}, d.as(roleIngest, nil))
	for range workers {
		b.start(t, []string{roleWorker}, d.as(roleWorker, func(c *Config) { c.WorkerConcurrency = 16 }))
	}
	return d
}

// as configures a program for the cluster as role's NATS user.
func (d *clusterDrill) as(role string, mod func(*Config)) func(*Config) {
	return func(c *Config) {
		c.NATSCreds, c.NATSCA = d.creds[role], d.cluster.CAFile
		c.NATSTopology, c.StreamReplicas = topologyCheck, 3
		if mod != nil {
			mod(c)
		}
	}
}

// drillLoad is what the clients of a drill saw.
type drillLoad struct {
	mu        sync.Mutex
	ids       []string // accepted message ids
	accepted  atomic.Int64
	retries   atomic.Int64
	lost      atomic.Int64 // messages never accepted by the deadline
	maxAccept atomic.Int64 // slowest acceptance, first try to 2xx, in ns
	done      chan struct{}
}

// load posts perUser messages for each of users users, one after another
// with pace between them, as a client that retries a failed post with the
// same client_msg_id (safe: the edge derives the message id from it) until
// the message is accepted or the deadline passes.
func (d *clusterDrill) load(t *testing.T, users, perUser int, pace time.Duration) *drillLoad {
	l := &drillLoad{done: make(chan struct{})}
	base := "http://" + d.edge.Addr()
	client := &http.Client{Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for u := range users {
		wg.Go(func() {
			user := fmt.Sprintf("drill-%s-%03d", d.run, u)
			tok := bearer(t, "demo", user)
			conv := ""
			for j := range perUser {
				req := map[string]any{"text": fmt.Sprintf("第%d个问题：双11满减怎么算？ %s-%d", j, user, j),
					"client_msg_id": fmt.Sprintf("m%d", j)}
				if conv != "" {
					req["conversation_id"] = conv
				}
				body, _ := json.Marshal(req)
				start := time.Now()
				for attempt := 0; ; attempt++ {
					id, c, retryAfter, ok := postDrill(client, base, tok, body)
					if ok {
						conv = c
						l.mu.Lock()
						l.ids = append(l.ids, id)
						l.mu.Unlock()
						l.accepted.Add(1)
						for took := int64(time.Since(start)); ; {
							old := l.maxAccept.Load()
							if took <= old || l.maxAccept.CompareAndSwap(old, took) {
								break
							}
						}
						break
					}
					if time.Since(start) > 60*time.Second {
						l.lost.Add(1)
						t.Errorf("%s message %d: not accepted in 60 s", user, j)
						break
					}
					l.retries.Add(1)
					time.Sleep(min(retryAfter, time.Second))
				}
				time.Sleep(pace)
			}
		})
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// wait waits until every client has finished.
func (l *drillLoad) wait() { <-l.done }

// waitAccepted waits until n messages have been accepted.
func (l *drillLoad) waitAccepted(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for l.accepted.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d messages accepted in 60 s, want %d", l.accepted.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// postDrill posts one message; ok when the edge accepted it.
func postDrill(client *http.Client, base, tok string, body []byte) (id, conv string, retryAfter time.Duration, ok bool) {
	req, _ := http.NewRequest("POST", base+"/v1/messages", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", "", 100 * time.Millisecond, false
	}
	defer resp.Body.Close()
	var r struct {
		MessageID      string `json:"message_id"`
		ConversationID string `json:"conversation_id"`
	}
	if resp.StatusCode/100 != 2 || json.NewDecoder(resp.Body).Decode(&r) != nil || r.MessageID == "" {
		s, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return "", "", max(time.Duration(s)*time.Second, 100*time.Millisecond), false
	}
	return r.MessageID, r.ConversationID, 0, true
}

// check waits until every accepted message is answered and checks exactly
// once: 0 lost, one distinct reply per message in CHAT_EVENTS, and each
// message stored in CHAT_IN once. It returns the time from the end of the
// load to the last answer and its reply event.
func (d *clusterDrill) check(t *testing.T, l *drillLoad, want int) time.Duration {
	t.Helper()
	l.wait()
	if l.lost.Load() != 0 || len(l.ids) != want {
		t.Fatalf("%d messages accepted, %d lost, want %d accepted", len(l.ids), l.lost.Load(), want)
	}
	done := time.Now()
	conn, err := pgx.Connect(context.Background(), d.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(120 * time.Second)
	var answered int
	for {
		if err := conn.QueryRow(context.Background(),
			`SELECT count(*) FROM messages WHERE status = 'answered' AND id = ANY($1)`, l.ids).Scan(&answered); err != nil {
			t.Fatal(err)
		}
		if answered == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages answered in 120 s: lost", answered, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	drain := time.Since(done)

	admin := queue.ConnectConfig{URL: d.cluster.URL(), Creds: d.creds["admin"], CA: d.cluster.CAFile,
		InboxPrefix: "_INBOX.admin"}
	nc, err := queue.Connect(admin)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// A reply event is published after the reply is stored; one whose
	// publish failed while a server was down is re-published (redelivery,
	// the sweeper). Wait until every message has its event.
	events := &replyReader{js: js, byMessage: map[string]map[string]bool{}}
	for deadline := time.Now().Add(120 * time.Second); ; {
		events.read(t)
		missing := 0
		for _, id := range l.ids {
			if len(events.byMessage[id]) == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d answered messages have no reply event in CHAT_EVENTS 120 s later", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
	drain = time.Since(done)
	dups := 0
	for _, id := range l.ids {
		if n := len(events.byMessage[id]); n != 1 {
			dups++
			if dups <= 5 {
				t.Errorf("message %s answered by %d distinct replies in CHAT_EVENTS, want 1", id, n)
			}
		}
	}
	var replies int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM replies`).Scan(&replies); err != nil {
		t.Fatal(err)
	}
	if replies > want {
		t.Errorf("%d replies stored for %d messages", replies, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, queue.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != uint64(want) || info.Config.Replicas != 3 {
		t.Errorf("CHAT_IN holds %d messages (R%d) for %d sent: a retry was stored twice", info.State.LastSeq,
			info.Config.Replicas, want)
	}
	return drain
}

// replyReader reads the reply events of CHAT_EVENTS by sequence, as the
// admin user may (replyEvents's consumer needs a user that may consume),
// each call from where the last one stopped. byMessage holds, per message
// id, the distinct reply ids that answered it.
type replyReader struct {
	js        jetstream.JetStream
	next      uint64
	byMessage map[string]map[string]bool
}

func (rr *replyReader) read(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := rr.js.Stream(ctx, queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for rr.next = max(rr.next, info.State.FirstSeq); info.State.Msgs > 0 && rr.next <= info.State.LastSeq; rr.next++ {
		msg, err := s.GetMsg(ctx, rr.next)
		for errors.Is(err, nats.ErrNoResponders) && ctx.Err() == nil { // a leader moving
			time.Sleep(50 * time.Millisecond)
			msg, err = s.GetMsg(ctx, rr.next)
		}
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("reply event %d: %v", rr.next, err)
		}
		var r peakdesk.Reply
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			t.Fatalf("reply event %q: %v", msg.Data, err)
		}
		for _, id := range r.MessageIDs {
			if rr.byMessage[id] == nil {
				rr.byMessage[id] = map[string]bool{}
			}
			rr.byMessage[id][r.ID] = true
		}
	}
}

// Kill the CHAT_IN stream leader (SIGKILL) in the middle of a burst: the
// other two elect a new leader, the edge's publishes that failed meanwhile
// are retried by their clients with the same client_msg_id, and every
// message is answered exactly once. The killed node then rejoins.
func TestClusterDrillStreamLeaderKilledDuringBurst(t *testing.T) {
	users, perUser, pace := 30, 6, 20*time.Millisecond
	if drillFull() {
		users, perUser, pace = 200, 20, 50*time.Millisecond
	}
	d := startClusterDrill(t, 2)
	want := users * perUser
	start := time.Now()
	l := d.load(t, users, perUser, pace)
	l.waitAccepted(t, int64(want/3))

	leader := d.cluster.StreamLeader(queue.StreamIn)
	if leader < 0 {
		t.Fatal("CHAT_IN has no leader")
	}
	killedAt := time.Now()
	acceptedBefore := l.accepted.Load()
	d.cluster.Kill(leader)
	// Recovery: a new leader, and the edge accepting messages again.
	var elected time.Duration
	for deadline := time.Now().Add(30 * time.Second); ; {
		if n := d.cluster.StreamLeader(queue.StreamIn); n >= 0 && n != leader {
			elected = time.Since(killedAt)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new CHAT_IN leader 30 s after the old one was killed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var resumed time.Duration
	for deadline := time.Now().Add(30 * time.Second); ; {
		if l.accepted.Load() > acceptedBefore+int64(users) {
			resumed = time.Since(killedAt)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the edge accepted nothing 30 s after the leader was killed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.wait()
	loaded := time.Since(start)
	d.cluster.Start(leader)
	rejoined := d.cluster.WaitHealthy(60 * time.Second)
	drain := d.check(t, l, want)
	t.Logf("DRILL leader-kill: %d messages (%d users × %d) in %s, CHAT_IN leader n%d killed after %d; "+
		"new leader in %s, edge accepting again in %s; client retries %d, slowest acceptance %s; "+
		"killed node healthy %s after restart; last answer and its event %s after the load; 0 lost, 0 duplicated",
		want, users, perUser, loaded.Round(time.Millisecond), leader, acceptedBefore, elected.Round(time.Millisecond),
		resumed.Round(time.Millisecond), l.retries.Load(), time.Duration(l.maxAccept.Load()).Round(time.Millisecond),
		rejoined.Round(time.Millisecond), drain.Round(time.Millisecond))
}

// Restart the three nodes one by one (SIGTERM, start, wait until every
// stream and consumer is current again: what a StatefulSet's rolling
// update does) while messages keep coming: every message is answered
// exactly once.
func TestClusterDrillRollingRestartUnderLoad(t *testing.T) {
	users, perUser, pace := 12, 14, 500*time.Millisecond
	if drillFull() {
		users, perUser, pace = 100, 20, 400*time.Millisecond
	}
	d := startClusterDrill(t, 2)
	want := users * perUser
	start := time.Now()
	l := d.load(t, users, perUser, pace)
	l.waitAccepted(t, int64(want/10))
	var steps []time.Duration
	for i := range 3 {
		at := time.Now()
		d.cluster.Stop(i)
		d.cluster.Start(i)
		d.cluster.WaitHealthy(60 * time.Second)
		steps = append(steps, time.Since(at).Round(time.Millisecond))
	}
	restarted := time.Since(start)
	if l.accepted.Load() >= int64(want) {
		t.Logf("the load ended before the restarts did (%s): a shorter drill than meant", restarted)
	}
	l.wait()
	loaded := time.Since(start)
	drain := d.check(t, l, want)
	t.Logf("DRILL rolling-restart: %d messages (%d users × %d) in %s; nodes restarted one by one, each "+
		"stop→healthy %v; client retries %d, slowest acceptance %s; last answer and its event %s after the load; 0 lost, 0 duplicated",
		want, users, perUser, loaded.Round(time.Millisecond), steps, l.retries.Load(),
		time.Duration(l.maxAccept.Load()).Round(time.Millisecond), drain.Round(time.Millisecond))
}
