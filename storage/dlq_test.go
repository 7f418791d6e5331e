package storage_test

import (
	"context"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/storage"
)

// Operators see a dead letter's text and reason masked: they need to know
// what failed, not the customer's phone or ID-card number.
func TestDeadLetterTextIsMaskedForOperators(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	m := newMessage("shop1", hexID("c", 50), "u1", 50)
	m.Text = "退款！手机138\u200b1234\u200b5678，身份证110105491231002"
	out, err := db.RecordDeadLetter(ctx, &storage.DeadLetter{Message: *m, Subject: "chat.in.p2.shop1", InSeq: 7,
		Deliveries: 5, Reason: "max deliveries (5) reached; the tool was told 13987654321"}, "notice")
	if err != nil {
		t.Fatal(err)
	}
	listed, err := db.ListDLQ(ctx, storage.DLQFilter{Scope: "shop1"})
	if err != nil || len(listed) != 1 {
		t.Fatalf("list: %v %v", listed, err)
	}
	discarded, err := db.DiscardDLQ(ctx, storage.DLQAction{ID: out.Entry.ID, Scope: "shop1", Actor: "op"})
	if err != nil {
		t.Fatal(err)
	}
	for name, e := range map[string]*storage.DLQEntry{"recorded": out.Entry, "listed": &listed[0], "discarded": discarded} {
		if e.Text != "退款！手机138****5678，身份证***********1002" {
			t.Errorf("%s entry text %q", name, e.Text)
		}
		if !strings.Contains(e.Reason, "139****4321") || strings.Contains(e.Reason, "13987654321") {
			t.Errorf("%s entry reason %q", name, e.Reason)
		}
	}
	// The message itself keeps the customer's words until the shop's
	// retention ends (a human agent takes the conversation over).
	if q, err := db.QueuedMessage(ctx, "shop1", m.ID); err != nil || q.Text != m.Text {
		t.Errorf("stored message %+v %v, want the text as written", q, err)
	}
}
