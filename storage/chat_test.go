package storage_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/redis/go-redis/v9"
)

func hexID(prefix string, n int) string { return fmt.Sprintf("%s%0*x", prefix, 32-len(prefix), n) }

func newMessage(shop, conv, user string, n int) *peakdesk.Message {
	return &peakdesk.Message{
		ID: hexID("a", n), ShopID: shop, ConversationID: conv, UserID: user,
		Text: fmt.Sprintf("question %d", n), Priority: peakdesk.P2, AcceptedAt: time.Now().UTC(),
	}
}

// answered stores m answered by a reply with the given id and text.
func answered(t *testing.T, db *storage.DB, m *peakdesk.Message, id, text string) {
	t.Helper()
	r := &peakdesk.Reply{ID: id, ShopID: m.ShopID, ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceLLM}
	if _, existed, err := db.SaveAnsweredMessage(context.Background(), m, r, nil); err != nil || existed {
		t.Fatalf("store answered message: existed=%v err=%v", existed, err)
	}
}

func setupDB(t *testing.T) *storage.DB {
	t.Helper()
	db := storagetest.DB(t)
	for _, s := range []string{"shop1", "shop2"} {
		if err := db.EnsureShop(context.Background(), s, s); err != nil {
			t.Fatal(err)
		}
	}
	return db
}

func TestReadsAreScopedByShop(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	m := newMessage("shop1", hexID("c", 3), "u1", 20)
	answered(t, db, m, "scoped-1", "answer")
	if _, err := db.Message(ctx, "shop2", m.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Message from another shop: %v, want ErrNotFound", err)
	}
	if _, err := db.Conversation(ctx, "shop2", m.ConversationID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Conversation from another shop: %v, want ErrNotFound", err)
	}
	if _, err := db.ConversationOwner(ctx, "shop2", m.ConversationID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("ConversationOwner from another shop: %v, want ErrNotFound", err)
	}
	// A message naming another shop's conversation is refused, not answered.
	intruder := newMessage("shop2", m.ConversationID, "u1", 21)
	if _, err := db.ClaimMessage(ctx, intruder, "w1", time.Minute, 20); !errors.Is(err, storage.ErrForeignConversation) {
		t.Errorf("ClaimMessage into another shop's conversation: %v, want ErrForeignConversation", err)
	}
	if _, err := db.Message(ctx, "shop2", intruder.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the intruding message was stored: %v", err)
	}
	// Same for another user of the same shop.
	other := newMessage("shop1", m.ConversationID, "u2", 22)
	if _, err := db.ClaimMessage(ctx, other, "w1", time.Minute, 20); !errors.Is(err, storage.ErrForeignConversation) {
		t.Errorf("ClaimMessage into another user's conversation: %v, want ErrForeignConversation", err)
	}
}

func TestMemoryRebuildsFromPostgresAndAppends(t *testing.T) {
	t.Parallel()
	db, rdb := memoryDeps(t)
	ctx := context.Background()
	conv := fmt.Sprintf("%032x", time.Now().UnixNano())
	mem := &storage.Memory{DB: db, Redis: rdb, Turns: 3}
	t.Cleanup(func() { rdb.Del(context.Background(), "pd:mem:shop1:"+conv) })

	m1 := newMessage("shop1", conv, "u1", 30)
	m1.AcceptedAt = time.Now().Add(-time.Minute).UTC()
	answered(t, db, m1, "mem-r1", "answer 1")
	m2 := newMessage("shop1", conv, "u1", 31)
	turns, err := mem.Load(ctx, "shop1", conv, []string{m2.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(turns) != 2 || turns[0].Text != m1.Text || turns[1].Text != "answer 1" {
		t.Fatalf("rebuilt turns %+v", turns)
	}
	mem.Append(ctx, "shop1", conv, storage.Turn{Role: "user", Text: m2.Text}, storage.Turn{Role: "assistant", Text: "answer 2"})
	turns, err = mem.Load(ctx, "shop1", conv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(turns) != 3 || turns[0].Text != "answer 1" || turns[2].Text != "answer 2" {
		t.Fatalf("cached turns after append (keep 3) %+v", turns)
	}
}

func TestSaveAnsweredMessageIsAtomicAndIdempotent(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	m := newMessage("shop1", hexID("c", 40), "u1", 40)
	r := &peakdesk.Reply{ID: "shed-1", ShopID: "shop1", ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: "faq answer", Source: peakdesk.SourceFAQ}
	got, existed, err := db.SaveAnsweredMessage(ctx, m, r, nil)
	if err != nil || existed || got.ID != "shed-1" {
		t.Fatalf("first save: %+v existed=%v err=%v", got, existed, err)
	}
	rec, err := db.Message(ctx, "shop1", m.ID)
	if err != nil || rec.Status != peakdesk.StatusAnswered || rec.Reply == nil || rec.Reply.ID != "shed-1" {
		t.Fatalf("stored message %+v, %v", rec, err)
	}
	// A repeat stores nothing and returns the first answer.
	again := &peakdesk.Reply{ID: "shed-2", ShopID: "shop1", ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: "other", Source: peakdesk.SourceFAQ}
	got, existed, err = db.SaveAnsweredMessage(ctx, m, again, nil)
	if err != nil || !existed || got == nil || got.ID != "shed-1" {
		t.Fatalf("repeat: %+v existed=%v err=%v", got, existed, err)
	}
	// A message already queued and taken by a worker is not answered here.
	queued := newMessage("shop1", m.ConversationID, "u1", 41)
	if _, err := db.ClaimMessage(ctx, queued, "w1", time.Minute, 20); err != nil {
		t.Fatal(err)
	}
	got, existed, err = db.SaveAnsweredMessage(ctx, queued, &peakdesk.Reply{ID: "shed-3", ShopID: "shop1",
		ConversationID: m.ConversationID, MessageIDs: []string{queued.ID}, Text: "x", Source: peakdesk.SourceFAQ}, nil)
	if err != nil || !existed || got != nil {
		t.Fatalf("queued message: %+v existed=%v err=%v", got, existed, err)
	}
	// Another user's conversation is refused.
	intruder := newMessage("shop1", m.ConversationID, "u2", 42)
	if _, _, err := db.SaveAnsweredMessage(ctx, intruder, &peakdesk.Reply{ID: "shed-4", ShopID: "shop1",
		ConversationID: m.ConversationID, MessageIDs: []string{intruder.ID}, Text: "x", Source: peakdesk.SourceFAQ}, nil); !errors.Is(err, storage.ErrForeignConversation) {
		t.Fatalf("intruder: %v", err)
	}
}

// A conversation without turns is cached too: its first turn, appended,
// is what the next Load finds, without Postgres.
func TestMemoryCachesAConversationWithoutTurns(t *testing.T) {
	t.Parallel()
	db, rdb := memoryDeps(t)
	ctx := context.Background()
	conv := fmt.Sprintf("%032x", time.Now().UnixNano()+1)
	mem := &storage.Memory{DB: db, Redis: rdb, Turns: 3}
	t.Cleanup(func() { rdb.Del(context.Background(), "pd:mem:shop1:"+conv) })
	turns, err := mem.Load(ctx, "shop1", conv, nil)
	if err != nil || len(turns) != 0 {
		t.Fatalf("new conversation: %+v %v", turns, err)
	}
	mem.Append(ctx, "shop1", conv, storage.Turn{Role: "user", Text: "q1"}, storage.Turn{Role: "assistant", Text: "a1"})
	// Postgres holds no turn of it: these come from Redis.
	turns, err = mem.Load(ctx, "shop1", conv, nil)
	if err != nil || len(turns) != 2 || turns[0].Text != "q1" || turns[1].Text != "a1" {
		t.Fatalf("after the first turn: %+v %v", turns, err)
	}
	mem.Append(ctx, "shop1", conv, storage.Turn{Role: "user", Text: "q2"}, storage.Turn{Role: "assistant", Text: "a2"})
	turns, err = mem.Load(ctx, "shop1", conv, nil)
	if err != nil || len(turns) != 3 || turns[0].Text != "a1" || turns[2].Text != "a2" {
		t.Fatalf("after the second turn (keep 3): %+v %v", turns, err)
	}
}

// Started caches a new conversation as having no turns, but never wipes a
// list that is there: another worker that took the conversation over while
// the first one stalled may have cached its turn already.
func TestMemoryStartedKeepsTurnsCachedMeanwhile(t *testing.T) {
	t.Parallel()
	db, rdb := memoryDeps(t)
	ctx := context.Background()
	mem := &storage.Memory{DB: db, Redis: rdb, Turns: 3}
	conv := fmt.Sprintf("%032x", time.Now().UnixNano()+7)
	t.Cleanup(func() { rdb.Del(context.Background(), "pd:mem:shop1:"+conv) })

	// The other worker's Load (nothing in Postgres) and its turn.
	if _, err := mem.Load(ctx, "shop1", conv, nil); err != nil {
		t.Fatal(err)
	}
	mem.Append(ctx, "shop1", conv, storage.Turn{Role: "user", Text: "q1"}, storage.Turn{Role: "assistant", Text: "a1"})
	// The stalled first worker notes the conversation as new.
	mem.Started(ctx, "shop1", conv)
	turns, err := mem.Load(ctx, "shop1", conv, nil)
	if err != nil || len(turns) != 2 || turns[1].Text != "a1" {
		t.Fatalf("after a late Started: %+v %v; want the cached turn kept", turns, err)
	}

	// A conversation nobody cached: Started makes its next Load a Redis hit.
	fresh := fmt.Sprintf("%032x", time.Now().UnixNano()+8)
	t.Cleanup(func() { rdb.Del(context.Background(), "pd:mem:shop1:"+fresh) })
	mem.Started(ctx, "shop1", fresh)
	if n, err := rdb.LLen(ctx, "pd:mem:shop1:"+fresh).Result(); err != nil || n != 1 {
		t.Fatalf("Started cached %d elements (%v); want the no-turns marker", n, err)
	}
	if ttl, err := rdb.PTTL(ctx, "pd:mem:shop1:"+fresh).Result(); err != nil || ttl <= 0 {
		t.Fatalf("Started's key has TTL %v (%v); want one", ttl, err)
	}
}

// memoryDeps returns a database with shop1 and shop2 and a Redis client,
// for the conversation memory's tests.
func memoryDeps(t *testing.T) (*storage.DB, *redis.Client) {
	t.Helper()
	db := setupDB(t)
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return db, rdb
}
