package storage_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

func agentOf(shop, who string) storage.DeskActor {
	return storage.DeskActor{Agent: who, Scope: shop, Via: "test"}
}

// takeoverDB is a database whose shop1 has a webhook URL, so desk events
// are written (nothing delivers them here).
func takeoverDB(t *testing.T) *storage.DB {
	t.Helper()
	db := setupDB(t)
	if err := db.PutShopAPISettings(context.Background(), storage.ShopAPISettings{ShopID: "shop1",
		WebhookURL: "https://shop.example.com/hooks"}); err != nil {
		t.Fatal(err)
	}
	return db
}

// handedOver stores m and answers it with the bot's handoff reply, as a
// worker does when the customer asks for a human.
func handedOver(t *testing.T, db *storage.DB, m *peakdesk.Message) {
	t.Helper()
	ctx := context.Background()
	c, err := db.ClaimMessage(ctx, m, "owner-"+m.ID, lease, 20)
	if err != nil || c.Hold == nil {
		t.Fatalf("claim: %+v %v", c, err)
	}
	r := turnReply(c.Hold, "r"+m.ID[1:])
	r.Source = peakdesk.SourceHandoff
	next, err := db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: r,
		Handoff: &storage.HandOff{Reason: peakdesk.HandoffCustomerAsked, Priority: m.Priority}}, lease, 20)
	if err != nil || next != nil {
		t.Fatalf("save handoff turn: next %+v, %v", next, err)
	}
}

// keptForAgent stores m as a worker does while a human owns its
// conversation, and announces it.
func keptForAgent(t *testing.T, db *storage.DB, m *peakdesk.Message) {
	t.Helper()
	c, err := db.ClaimMessage(context.Background(), m, "owner-"+m.ID, lease, 20)
	if err != nil || !c.Human {
		t.Fatalf("claim while a human owns the conversation: %+v %v; want Human", c, err)
	}
	if err := db.AnnounceHumanMessage(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// deskEvents returns the types of the desk webhooks written for conv, in
// order, with the message id of each message.created.
func deskEvents(t *testing.T, db *storage.DB, conv string) []string {
	t.Helper()
	actions, err := db.ListActions(context.Background(), storage.AllShops,
		storage.ActionFilter{Kind: peakdesk.ActionWebhookDeliver, Q: conv}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range slices.Backward(actions) {
		var ev peakdesk.DeskEvent
		if err := json.Unmarshal(a.Payload, &ev); err != nil {
			t.Fatal(err)
		}
		switch {
		case ev.Type == peakdesk.EventMessageCreated:
			out = append(out, ev.Type+" "+ev.Message.ID)
		case strings.HasPrefix(ev.Type, "conversation."):
			if ev.Conversation == nil || ev.Conversation.ConversationID != conv {
				t.Fatalf("event %s without its conversation: %s", ev.Type, a.Payload)
			}
			out = append(out, ev.Type)
		}
	}
	return out
}

func state(t *testing.T, db *storage.DB, conv string) *peakdesk.DeskConversation {
	t.Helper()
	d, err := db.DeskConversation(context.Background(), storage.AllShops, conv)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The takeover state machine, one step at a time: handoff, messages kept
// for the agent, one agent's claim, another's refused, the holder's reply
// answering what waited, resolve giving the rest back to the bot, and the
// bot's next turn. Every step writes its desk webhook.
func TestTakeoverStateMachine(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	conv := hexID("c", 1)
	m1 := newMessage("shop1", conv, "u1", 1)
	handedOver(t, db, m1)
	if d := state(t, db, conv); d.State != peakdesk.StateWaitingHuman || d.Reason != peakdesk.HandoffCustomerAsked ||
		d.Priority != peakdesk.P2 || d.WaitingSince.IsZero() {
		t.Fatalf("after the handoff: %+v", d.Takeover)
	}

	// A message while it waits: stored for the agent, queued to the client.
	m2 := newMessage("shop1", conv, "u1", 2)
	m2.Priority = peakdesk.P0
	c, err := db.ClaimMessage(ctx, m2, "owner-2", lease, 20)
	if err != nil || !c.Human || c.Hold != nil {
		t.Fatalf("claim while waiting: %+v %v; want Human", c, err)
	}
	if err := db.AnnounceHumanMessage(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if rec, err := db.Message(ctx, "shop1", m2.ID); err != nil || rec.Status != peakdesk.StatusQueued {
		t.Fatalf("message while waiting: %+v %v; want queued", rec, err)
	}
	if d := state(t, db, conv); d.Priority != peakdesk.P0 {
		t.Fatalf("waiting priority %s after a p0 message; want p0", d.Priority)
	}

	// Another shop's agent does not see it; one agent gets it, a second is
	// refused and told who has it.
	if _, _, err := db.ClaimForAgent(ctx, agentOf("shop2", "eve"), conv); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("claim by another shop's agent: %v; want not found", err)
	}
	d, waited, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), conv)
	if err != nil || d.State != peakdesk.StateAssigned || d.Agent != "ann" || waited < 0 {
		t.Fatalf("ann's claim: %+v %v %v", d, waited, err)
	}
	if d, _, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), conv); err != nil || d.Agent != "ann" {
		t.Fatalf("ann claims again: %+v %v; want hers, unchanged", d, err)
	}
	_, _, err = db.ClaimForAgent(ctx, agentOf(storage.AllShops, "bob"), conv)
	if !errors.Is(err, storage.ErrTakeoverConflict) || peakdesk.ErrorCode(err) != peakdesk.EConflict ||
		!strings.Contains(peakdesk.ErrorMessage(err), "assigned to ann") {
		t.Fatalf("bob's claim: %v; want a conflict naming ann", err)
	}
	r := &peakdesk.Reply{ID: hexID("ra", 1), Text: "bob here", Agent: "bob"}
	if _, err := db.AgentReply(ctx, agentOf("shop1", "bob"), conv, r, nil); !errors.Is(err, storage.ErrTakeoverConflict) {
		t.Fatalf("bob's reply: %v; want a conflict", err)
	}

	// Ann's reply answers m2; a repeat of it is the same reply.
	r = &peakdesk.Reply{ID: hexID("ra", 2), Text: "ann here", Agent: "ann"}
	if stored, err := db.AgentReply(ctx, agentOf("shop1", "ann"), conv, r, nil); err != nil || !stored {
		t.Fatalf("ann's reply: %v %v", stored, err)
	}
	if r.Source != peakdesk.SourceAgent || !slices.Equal(r.MessageIDs, []string{m2.ID}) {
		t.Fatalf("ann's reply %+v; want source agent answering %s", r, m2.ID)
	}
	again := &peakdesk.Reply{ID: r.ID, Text: "ann here", Agent: "ann"}
	if stored, err := db.AgentReply(ctx, agentOf("shop1", "ann"), conv, again, nil); err != nil || stored ||
		!slices.Equal(again.MessageIDs, r.MessageIDs) {
		t.Fatalf("repeat: %+v %v %v", again, stored, err)
	}
	rec, err := db.Message(ctx, "shop1", m2.ID)
	if err != nil || rec.Status != peakdesk.StatusAnswered || rec.Reply.ID != r.ID || rec.Reply.Agent != "ann" {
		t.Fatalf("m2 after ann's reply: %+v %v", rec, err)
	}

	// m3 comes; bob may not resolve ann's conversation, ann may; m3 goes
	// back to the bot, which takes it in its next turn.
	m3 := newMessage("shop1", conv, "u1", 3)
	keptForAgent(t, db, m3)
	if _, err := db.ResolveConversation(ctx, agentOf("shop1", "bob"), conv); !errors.Is(err, storage.ErrTakeoverConflict) {
		t.Fatalf("bob resolves ann's conversation: %v; want a conflict", err)
	}
	d, err = db.ResolveConversation(ctx, agentOf("shop1", "ann"), conv)
	if err != nil || d.State != peakdesk.StateResolved || d.ResolvedAt.IsZero() {
		t.Fatalf("resolve: %+v %v", d, err)
	}
	h, err := db.ClaimConversation(ctx, "shop1", conv, "sweeper", lease, 20)
	if err != nil || h == nil || !slices.Equal(h.MessageIDs(), []string{m3.ID}) {
		t.Fatalf("the bot's turn after resolve: %+v %v; want m3", h, err)
	}
	if d := state(t, db, conv); d.State != peakdesk.StateBot {
		t.Fatalf("state when the bot answers again: %s", d.State)
	}
	if _, err := db.SaveTurn(ctx, h, storage.TurnReply{Reply: turnReply(h, hexID("rb", 3))}, lease, 20); err != nil {
		t.Fatal(err)
	}

	want := []string{"conversation.handoff", "message.created " + m2.ID, "conversation.assigned",
		"message.created " + m3.ID, "conversation.resolved"}
	if got := deskEvents(t, db, conv); !slices.Equal(got, want) {
		t.Fatalf("desk events %v; want %v", got, want)
	}
	entries, err := db.AuditLog(ctx, "shop1", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var audited []string
	for _, e := range entries {
		audited = append(audited, e.Actor+" "+e.Action)
	}
	if !slices.Equal(audited, []string{"ann conversation.resolve", "ann conversation.claim"}) {
		t.Fatalf("audit log %v", audited)
	}
}

// A human takes over while the bot composes its answer — an agent's claim,
// an order follow-up that gives up, another message dead-lettered: the
// bot's turn is refused in SaveTurn's transaction and stores nothing; its
// message waits for the agent.
func TestSaveTurnIsRefusedOnceAHumanOwnsTheConversation(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	for i, tc := range []struct {
		name   string
		reason string
		take   func(conv string, n int) error
	}{
		{"an agent takes over", peakdesk.HandoffAgentTakeover, func(conv string, _ int) error {
			_, _, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), conv)
			return err
		}},
		{"an order follow-up gives up", peakdesk.HandoffOrderLookup, func(conv string, n int) error {
			_, err := db.SaveFollowUp(ctx, &peakdesk.Reply{ID: hexID("f", n), ShopID: "shop1", ConversationID: conv,
				Text: "we could not look up your order", Source: peakdesk.SourceHandoff}, nil, true)
			return err
		}},
		{"another message is dead-lettered", peakdesk.HandoffDeadLetter, func(conv string, n int) error {
			dead := newMessage("shop1", conv, "u1", 500+n)
			_, err := db.RecordDeadLetter(ctx, &storage.DeadLetter{Message: *dead, Subject: "chat.in.p2.shop1",
				InSeq: uint64(n), Deliveries: 6, Reason: "max deliveries"}, "a human takes over")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conv := hexID("c", 100+i)
			m := newMessage("shop1", conv, "u1", 100+i)
			c, err := db.ClaimMessage(ctx, m, "owner", lease, 20)
			if err != nil || c.Hold == nil {
				t.Fatalf("claim: %+v %v", c, err)
			}
			if err := tc.take(conv, 100+i); err != nil {
				t.Fatal(err)
			}
			_, err = db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: turnReply(c.Hold, hexID("r", 100+i))}, lease, 20)
			if !errors.Is(err, storage.ErrHumanOwned) {
				t.Fatalf("save turn: %v; want ErrHumanOwned", err)
			}
			if _, err := db.ReplyFor(ctx, "shop1", m.ID); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("the bot's reply was stored: %v", err)
			}
			if rec, err := db.Message(ctx, "shop1", m.ID); err != nil || rec.Status != peakdesk.StatusQueued {
				t.Fatalf("message: %+v %v; want queued for the agent", rec, err)
			}
			if d := state(t, db, conv); !d.State.HumanOwned() || d.Reason != tc.reason {
				t.Fatalf("conversation %+v; want a human's, reason %s", d.Takeover, tc.reason)
			}
			if ev := deskEvents(t, db, conv); !slices.Contains(ev, "message.created "+m.ID) {
				t.Fatalf("desk events %v; want message.created for %s", ev, m.ID)
			}
		})
	}
}

// Ten agents claim one waiting conversation at once: one gets it, nine are
// told who did.
func TestConcurrentClaimsAssignOneAgent(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	conv := hexID("c", 7)
	handedOver(t, db, newMessage("shop1", conv, "u1", 7))
	var won, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			_, _, err := db.ClaimForAgent(ctx, agentOf("shop1", fmt.Sprintf("agent%d", i)), conv)
			switch {
			case err == nil:
				won.Add(1)
			case errors.Is(err, storage.ErrTakeoverConflict):
				refused.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 || refused.Load() != 9 {
		t.Fatalf("%d claims won, %d refused; want 1 and 9", won.Load(), refused.Load())
	}
	if got := deskEvents(t, db, conv); !slices.Equal(got, []string{"conversation.handoff", "conversation.assigned"}) {
		t.Fatalf("desk events %v", got)
	}
}

// Messages pour into a conversation that workers answer turn by turn
// while an agent takes it over. Every turn that starts saving after the
// takeover committed is refused; in the end no message waits for the bot,
// the ones the bot did not answer are the agent's — each announced once —
// and the agent's reply answers exactly those.
func TestMessagesRacingATakeoverAreNeverAnsweredByTheBot(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	conv := hexID("c", 9)
	var takenOver atomic.Bool
	var late atomic.Int32 // turns saved although they started after the takeover
	var wg sync.WaitGroup
	// turns answers a hold's turns as a worker does.
	turns := func(h *storage.Hold, n int) {
		for i := 0; h != nil; i++ {
			after := takenOver.Load()
			next, err := db.SaveTurn(ctx, h, storage.TurnReply{Reply: turnReply(h, hexID(fmt.Sprintf("r%d-", n), i))}, lease, 3)
			switch {
			case errors.Is(err, storage.ErrHumanOwned):
				if err := db.ReleaseHold(ctx, h); err != nil {
					t.Error(err)
				}
				return
			case err != nil:
				t.Error(err)
				return
			case after:
				late.Add(1)
			}
			h = next
		}
	}
	const total = 40
	for i := range total {
		if i == total/2 {
			wg.Go(func() {
				if _, _, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), conv); err != nil {
					t.Error(err)
				}
				takenOver.Store(true)
			})
		}
		m := newMessage("shop1", conv, "u1", 1000+i)
		m.AcceptedAt = m.AcceptedAt.Add(time.Duration(i) * time.Millisecond)
		wg.Go(func() {
			c, err := db.ClaimMessage(ctx, m, fmt.Sprintf("owner-%d", i), lease, 3)
			switch {
			case err != nil:
				t.Error(err)
			case c.Human:
				if err := db.AnnounceHumanMessage(ctx, m); err != nil {
					t.Error(err)
				}
			case c.Hold != nil:
				turns(c.Hold, i)
			}
		})
	}
	wg.Wait()
	if late.Load() != 0 {
		t.Fatalf("%d bot turns that started after the takeover were saved", late.Load())
	}
	msgs, err := db.Conversation(ctx, "shop1", conv)
	if err != nil {
		t.Fatal(err)
	}
	if msgs.State != peakdesk.StateAssigned || len(msgs.Messages) != total {
		t.Fatalf("conversation %s with %d messages", msgs.State, len(msgs.Messages))
	}
	var unanswered []string
	for _, m := range msgs.Messages {
		switch {
		case m.Status == peakdesk.StatusQueued:
			unanswered = append(unanswered, m.ID)
		case m.Status != peakdesk.StatusAnswered || m.Reply.Source != peakdesk.SourceLLM:
			t.Fatalf("message %+v", m)
		}
	}
	var raw []string
	for _, e := range deskEvents(t, db, conv) {
		if id, ok := strings.CutPrefix(e, "message.created "); ok {
			raw = append(raw, id)
		}
	}
	slices.Sort(raw)
	if sorted := slices.Sorted(slices.Values(unanswered)); !slices.Equal(raw, sorted) {
		t.Fatalf("announced %v; want each of the agent's %v once", raw, sorted)
	}
	r := &peakdesk.Reply{ID: hexID("ra", 9), Text: "ann here", Agent: "ann"}
	if _, err := db.AgentReply(ctx, agentOf("shop1", "ann"), conv, r, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.MessageIDs, unanswered) {
		t.Fatalf("ann's reply answers %v; want %v, in order", r.MessageIDs, unanswered)
	}
}

// A message the edge would answer from the FAQ while shedding load is kept
// for the agent when a human owns its conversation: no FAQ answer.
func TestShedAnswerIsNotGivenWhileAHumanOwnsTheConversation(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	conv := hexID("c", 11)
	handedOver(t, db, newMessage("shop1", conv, "u1", 11))
	m := newMessage("shop1", conv, "u1", 12)
	r := &peakdesk.Reply{ID: hexID("r", 12), ShopID: "shop1", ConversationID: conv, MessageIDs: []string{m.ID},
		Text: "from the FAQ", Source: peakdesk.SourceFAQ}
	if _, _, err := db.SaveAnsweredMessage(ctx, m, r, nil); !errors.Is(err, storage.ErrHumanOwned) {
		t.Fatalf("save answered: %v; want ErrHumanOwned", err)
	}
	rec, err := db.Message(ctx, "shop1", m.ID)
	if err != nil || rec.Status != peakdesk.StatusQueued || rec.Reply != nil {
		t.Fatalf("message %+v %v; want queued for the agent", rec, err)
	}
	if ev := deskEvents(t, db, conv); !slices.Contains(ev, "message.created "+m.ID) {
		t.Fatalf("desk events %v", ev)
	}
}

// Handing back gives the conversation and what the agent did not answer to
// the bot; an agent may hand back or resolve a conversation nobody claimed;
// a supervisor may resolve one another agent holds.
func TestHandBackAndSupervisors(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	conv := hexID("c", 20)
	handedOver(t, db, newMessage("shop1", conv, "u1", 20))
	m := newMessage("shop1", conv, "u1", 21)
	keptForAgent(t, db, m)
	d, err := db.HandBack(ctx, agentOf("shop1", "bob"), conv)
	if err != nil || d.State != peakdesk.StateBot {
		t.Fatalf("hand back: %+v %v", d, err)
	}
	due, err := db.DueConversations(ctx, 0, 10)
	if err != nil || !slices.Contains(due, storage.ConversationRef{ShopID: "shop1", ConversationID: conv}) {
		t.Fatalf("due conversations %v %v; want the handed-back one", due, err)
	}

	conv2 := hexID("c", 21)
	handedOver(t, db, newMessage("shop1", conv2, "u2", 22))
	if _, _, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), conv2); err != nil {
		t.Fatal(err)
	}
	boss := storage.DeskActor{Agent: "boss", Scope: storage.AllShops, Supervisor: true, Via: "test"}
	if d, err := db.ResolveConversation(ctx, boss, conv2); err != nil || d.State != peakdesk.StateResolved || d.Agent != "boss" {
		t.Fatalf("the supervisor's resolve: %+v %v", d, err)
	}
	if got := deskEvents(t, db, conv); !slices.Equal(got, []string{"conversation.handoff",
		"message.created " + m.ID, "conversation.handback"}) {
		t.Fatalf("desk events %v", got)
	}
}

// The waiting notice: once the shop's handoff_sla passes unclaimed, one
// notice per waiting period, however many processes look at once.
func TestWaitNoticeOncePerWaitingPeriod(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	if err := db.SetShopTakeoverSettings(ctx, "shop1", storage.TakeoverSettings{SLA: time.Second,
		Keywords: []string{" 找客服 ", "找客服", ""}}); err != nil {
		t.Fatal(err)
	}
	s, err := db.ShopTakeoverSettings(ctx, "shop1")
	if err != nil || s.SLA != time.Second || !slices.Equal(s.Keywords, []string{"找客服"}) {
		t.Fatalf("settings %+v %v", s, err)
	}
	conv := hexID("c", 30)
	handedOver(t, db, newMessage("shop1", conv, "u1", 30))
	notice := func(f storage.WaitFacts) string {
		return fmt.Sprintf("wait: %d ahead, %d claims, last %q", f.Ahead, f.RecentClaims, f.LastText)
	}
	if got, err := db.NoticeWaits(ctx, 10, notice, nil); err != nil || len(got) != 0 {
		t.Fatalf("notices before the SLA passed: %+v %v", got, err)
	}
	ageWait(t, db, conv, 2*time.Second)
	var mu sync.Mutex
	var notices []*peakdesk.Reply
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			got, err := db.NoticeWaits(ctx, 10, notice, nil)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			notices = append(notices, got...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(notices) != 1 || notices[0].Text != `wait: 0 ahead, 0 claims, last "question 30"` ||
		notices[0].Source != peakdesk.SourceHandoff || len(notices[0].MessageIDs) != 0 {
		t.Fatalf("notices %+v; want one", notices)
	}
	// A new waiting period gets a notice of its own.
	if _, err := db.HandBack(ctx, agentOf("shop1", "ann"), conv); err != nil {
		t.Fatal(err)
	}
	handedOver(t, db, newMessage("shop1", conv, "u1", 31))
	ageWait(t, db, conv, 2*time.Second)
	if got, err := db.NoticeWaits(ctx, 10, notice, nil); err != nil || len(got) != 1 || got[0].ID == notices[0].ID {
		t.Fatalf("second waiting period: %+v %v; want a new notice", got, err)
	}
	if n, err := db.CountWaiting(ctx); err != nil || n != 1 {
		t.Fatalf("waiting %d %v", n, err)
	}
}

// ageWait moves conv's waiting start back by d, as if it had waited so long.
func ageWait(t *testing.T, db *storage.DB, conv string, d time.Duration) {
	t.Helper()
	if err := db.Tx(context.Background(), func(tx pgx.Tx) error {
		_, err := tx.Exec(context.Background(), `UPDATE conversations SET waiting_since = waiting_since - $2::interval
			WHERE id = $1`, conv, d)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
