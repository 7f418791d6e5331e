package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/faq"
)

// An edge that sheds every p2 message answers each from the FAQ on its POST
// without touching Postgres; the shed writer of a worker process stores the
// answers and is killed with SIGKILL half way, and another worker process
// takes over. Every answer the customers got is stored exactly once — the
// message answered by that very reply, one webhook action, one reply event
// — and GET shows it before and after it is stored.
func TestShedAnswersStoredExactlyOnceAcrossShedWriterKill(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	ctx := context.Background()
	db, err := storage.Open(ctx, b.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ImportFAQ(ctx, "demo", faq.DemoEntries(), false); err != nil {
		t.Fatal(err)
	}
	if err := db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: b.shopURL + "/webhooks/replies", WebhookSecret: "e2e-webhook-secret"}); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Admission control sheds p2 at a backlog of one message that waits
	// for no time at all.
	edge := b.start(t, []string{roleIngest}, func(c *Config) {
		c.AdmissionDisabled = false
		c.AdmissionMinBacklog = 1
		c.AdmissionMaxWaitP2 = time.Nanosecond
	})
	base := "http://" + edge.Addr()
	nc, err := nats.Connect(b.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	backlog := nats.NewMsg(queue.InSubject(peakdesk.P2, "other"))
	backlog.Data = []byte(`{}`) // no worker runs yet to drain it
	if _, err := js.PublishMsg(ctx, backlog); err != nil {
		t.Fatal(err)
	}
	const question = "双11满减怎么算？买两件能叠加优惠券吗？"
	storagetest.WaitFor(t, "the edge sheds", 15*time.Second, func() bool {
		r := call(t, "POST", base+"/v1/messages", bearer(t, "demo", "warm-up"), jsonBody(t, map[string]any{"text": question}))
		return r.status == http.StatusOK
	})

	// 100 customers, 8 questions each in one conversation (within the
	// per-user burst), all shed and answered on the POST.
	const users, perUser = 100, 8
	type answered struct{ user, messageID, replyID string }
	var mu sync.Mutex
	var all []answered
	var wg sync.WaitGroup
	// Users of this run only: Redis outlives the test's database, and the
	// edge looks a keyed message up there before it answers it (a retry
	// of an earlier run's message id would get that run's answer).
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	for u := range users {
		wg.Go(func() {
			user := fmt.Sprintf("shed-user-%s-%03d", run, u)
			tok := bearer(t, "demo", user)
			conv := ""
			for j := range perUser {
				req := map[string]any{"text": question, "client_msg_id": fmt.Sprintf("q-%d", j)}
				if conv != "" {
					req["conversation_id"] = conv
				}
				r := call(t, "POST", base+"/v1/messages", tok, jsonBody(t, req))
				reply, _ := r.body["reply"].(map[string]any)
				if r.status != http.StatusOK || r.body["status"] != "answered" || reply == nil || reply["source"] != peakdesk.SourceFAQ {
					t.Errorf("post: %d %s, want 200 answered from the FAQ", r.status, r.raw)
					return
				}
				conv = r.body["conversation_id"].(string)
				mu.Lock()
				all = append(all, answered{user: user, messageID: r.body["message_id"].(string), replyID: reply["reply_id"].(string)})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Nothing is stored yet; GET shows the answers all the same.
	count := func(query string) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, query).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// (The warm-up's posts before the edge shed were queued; the rows
	// counted are the shed customers'.)
	if n := count(`SELECT count(*) FROM messages WHERE shop_id = 'demo' AND user_id LIKE 'shed-user-%'`); n != 0 {
		t.Fatalf("%d messages stored on the request path", n)
	}
	for _, a := range all[:20] {
		st := waitAnswered(t, base, bearer(t, "demo", a.user), a.messageID, time.Now().Add(5*time.Second))
		if st.Reply == nil || st.Reply.ID != a.replyID {
			t.Errorf("GET %s before it is stored: %+v, want reply %s", a.messageID, st.Reply, a.replyID)
		}
	}

	// A worker process stores them one per transaction, and is killed
	// while it does.
	victim := b.startChildWorker(t, "worker-1", "PEAKDESK_SHED_WRITER_BATCH=1", "PEAKDESK_MASTER_KEY="+testMasterKey)
	stored := `SELECT count(*) FROM messages WHERE shop_id = 'demo' AND user_id LIKE 'shed-user-%' AND status = 'answered'`
	deadline := time.Now().Add(30 * time.Second)
	for count(stored) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the shed writer stored nothing in 30 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.done
	atKill := count(stored)
	if atKill >= len(all) {
		t.Fatalf("the shed writer stored all %d answers before it was killed: the kill proves nothing", atKill)
	}
	t.Logf("killed the shed writer with %d of %d answers stored", atKill, len(all))

	b.startChildWorker(t, "worker-2", "PEAKDESK_MASTER_KEY="+testMasterKey)
	storagetest.WaitFor(t, "every shed answer stored", 60*time.Second, func() bool {
		return count(stored) == len(all)
	})
	cons, err := js.Consumer(ctx, queue.StreamIn, queue.ConsumerShedWriter)
	if err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "every shed record acked", 30*time.Second, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})

	// Exactly once, and the very answer the customer got.
	events := replyEvents(t, b.natsURL)
	for _, a := range all {
		var replyID string
		var hooks int
		err := conn.QueryRow(ctx, `SELECT m.reply_id,
			(SELECT count(*) FROM outbox_actions o WHERE o.reply_id = m.reply_id AND o.kind = 'webhook.deliver')
			FROM messages m WHERE m.shop_id = 'demo' AND m.id = $1`, a.messageID).Scan(&replyID, &hooks)
		if err != nil || replyID != a.replyID || hooks != 1 {
			t.Errorf("message %s: stored reply %q with %d webhook actions (%v), want %s with 1", a.messageID, replyID, hooks, err, a.replyID)
		}
		if len(events[a.messageID]) != 1 || !events[a.messageID][a.replyID] {
			t.Errorf("message %s: reply events %v, want just %s", a.messageID, events[a.messageID], a.replyID)
		}
	}
	if n := count(`SELECT count(*) FROM replies r JOIN conversations c ON c.id = r.conversation_id
			WHERE r.shop_id = 'demo' AND c.user_id LIKE 'shed-user-%'`); n != len(all) {
		t.Errorf("%d replies stored, want %d (one per answer, no orphan)", n, len(all))
	}
	for _, a := range all[len(all)-20:] {
		st := waitAnswered(t, base, bearer(t, "demo", a.user), a.messageID, time.Now().Add(5*time.Second))
		if st.Reply == nil || st.Reply.ID != a.replyID {
			t.Errorf("GET %s once stored: %+v, want reply %s", a.messageID, st.Reply, a.replyID)
		}
	}
}
