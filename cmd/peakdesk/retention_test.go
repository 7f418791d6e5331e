package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
)

// A customer's words are kept as written only for the shop's retention: a
// relay started after it finds the conversation's expired message and reply
// and masks them.
func TestRelayMasksExpiredConversationTexts(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 10 * time.Millisecond})
	p := b.start(t, []string{roleIngest, roleWorker}, nil)
	base := "http://" + p.Addr()
	alice := bearer(t, "demo", "alice")
	r := call(t, "POST", base+"/v1/messages?wait=10s", alice, []byte(`{"text":"请回电 13812345678，我要退款"}`))
	if r.status != http.StatusOK || r.body["status"] != "answered" {
		t.Fatalf("post: %d %s", r.status, r.raw)
	}
	conv := r.body["conversation_id"].(string)

	// Age the conversation past the default 30 days.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, table := range []string{"messages", "replies"} {
		if _, err := conn.Exec(ctx, `UPDATE `+table+` SET created_at = now() - interval '31 days'
			WHERE conversation_id = $1`, conv); err != nil {
			t.Fatal(err)
		}
	}

	b.start(t, []string{roleRelay}, nil)
	redacted := func() int {
		var n int
		if err := conn.QueryRow(ctx, `SELECT
				(SELECT count(*) FROM messages WHERE conversation_id = $1 AND redacted_at IS NOT NULL)
				+ (SELECT count(*) FROM replies WHERE conversation_id = $1 AND redacted_at IS NOT NULL)`,
			conv).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for deadline := time.Now().Add(15 * time.Second); redacted() < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d rows redacted, want the message and its reply", redacted())
		}
	}
	c := call(t, "GET", base+"/v1/conversations/"+conv, alice, nil)
	msgs, _ := c.body["messages"].([]any)
	if c.status != http.StatusOK || len(msgs) != 1 {
		t.Fatalf("conversation: %d %s", c.status, c.raw)
	}
	if text := msgs[0].(map[string]any)["text"]; text != "请回电 138****5678，我要退款" {
		t.Errorf("message text %q after the retention, want it masked", text)
	}
}
