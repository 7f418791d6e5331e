package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/loadtest/sse"
	"github.com/peakdesk/peakdesk/storage"
)

// eventFeed reads one conversation's event stream in the background.
type eventFeed struct {
	mu     sync.Mutex
	events []sse.Event
}

// follow opens GET /v1/conversations/{conv}/events with tok and collects
// its events until the test ends.
func follow(t *testing.T, base, tok, conv string) *eventFeed {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/conversations/"+conv+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		resp.Body.Close()
		t.Fatalf("events of %s: %d", conv, resp.StatusCode)
	}
	f := &eventFeed{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		rd := sse.NewReader(resp.Body)
		for {
			ev, err := rd.Next()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.events = append(f.events, ev)
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	return f
}

// of returns the data of the events of type typ so far.
func (f *eventFeed) of(typ string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, ev := range f.events {
		if ev.Type == typ {
			out = append(out, ev.Data)
		}
	}
	return out
}

// replies returns the replies of the feed so far, by source.
func (f *eventFeed) replies(t *testing.T) map[string][]peakdesk.Reply {
	t.Helper()
	out := map[string][]peakdesk.Reply{}
	for _, data := range f.of("reply") {
		var r peakdesk.Reply
		if err := json.Unmarshal([]byte(data), &r); err != nil {
			t.Fatalf("reply event %q: %v", data, err)
		}
		out[r.Source] = append(out[r.Source], r)
	}
	return out
}

// eventually polls cond until it holds or 30 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not by the deadline", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// deskWebhooks returns the desk and reply webhooks the shop accepted for
// conv, as "type" or "reply.created:source", in arrival order.
func (b *testBundle) deskWebhooks(t *testing.T, conv string) []string {
	t.Helper()
	var out []string
	for _, wh := range b.shop.Webhooks() {
		var ev struct {
			Type           string `json:"type"`
			ConversationID string `json:"conversation_id"`
			Reply          *struct {
				Source string `json:"source"`
			} `json:"reply"`
			Message *struct {
				Text string `json:"text"`
			} `json:"message"`
		}
		if wh.Refused != "" || wh.Duplicate || json.Unmarshal(wh.Body, &ev) != nil || ev.ConversationID != conv {
			continue
		}
		switch {
		case ev.Reply != nil:
			out = append(out, ev.Type+":"+ev.Reply.Source)
		case ev.Message != nil:
			out = append(out, ev.Type+":"+ev.Message.Text)
		default:
			out = append(out, ev.Type)
		}
	}
	return out
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// conversationState reads conv as agent tok sees it.
func conversationState(t *testing.T, base, tok, conv string) peakdesk.Conversation {
	t.Helper()
	r := call(t, "GET", base+"/v1/conversations/"+conv, tok, nil)
	var c peakdesk.Conversation
	if r.status != http.StatusOK || json.Unmarshal(r.raw, &c) != nil {
		t.Fatalf("GET conversation %s: %d %s", conv, r.status, r.raw)
	}
	return c
}

// A customer who asks for a human gets one, over the real roles: the
// handoff happens without the LLM (on a p2 opening, which offers no
// tools); while the conversation waits the customer's messages are stored,
// pushed to the agents (their event stream, message.created webhooks) and
// answered by no bot; an agent claims it — a second agent's claim is
// refused —, replies twice, and the customer gets exactly those two
// replies over SSE, GET and the webhook; after resolve the bot answers
// again.
func TestEndToEndHumanTakeover(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 5 * time.Millisecond})
	db, err := storage.Open(context.Background(), b.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	err = db.PutShopAPISettings(context.Background(), storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: b.shopURL + "/webhooks/replies", WebhookSecret: "e2e-webhook-secret"})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The agent API is the dashboard role's; agents read conversations on
	// the edge.
	p := b.start(t, []string{roleIngest, roleWorker, roleRelay, roleDashboard}, nil)
	base := "http://" + p.Addr()
	alice := bearer(t, "demo", "alice")
	ann := bearer(t, "demo", "ann", "agent")
	bob := bearer(t, "demo", "bob", "agent")

	// 1. "我要人工" as the first message: handed over at once, no LLM call.
	llmBefore := b.llm.Stats().Requests
	r := call(t, "POST", base+"/v1/messages?wait=10s", alice, []byte(`{"text":"我要人工"}`))
	if r.status != http.StatusOK || r.body["status"] != "answered" {
		t.Fatalf("asking for a human: %d %s", r.status, r.raw)
	}
	conv := r.body["conversation_id"].(string)
	if src := r.body["reply"].(map[string]any)["source"]; src != peakdesk.SourceHandoff {
		t.Fatalf("the answer's source %v; want handoff", src)
	}
	if c := conversationState(t, base, ann, conv); c.State != peakdesk.StateWaitingHuman ||
		c.Reason != peakdesk.HandoffCustomerAsked {
		t.Fatalf("after asking: %s (%s); want waiting_human (customer_asked)", c.State, c.Reason)
	}
	if n := b.llm.Stats().Requests - llmBefore; n != 0 {
		t.Fatalf("%d LLM calls for a customer asking for a human; want 0", n)
	}
	eventually(t, "the conversation.handoff webhook", func() bool {
		return count(b.deskWebhooks(t, conv), peakdesk.EventConversationHandoff) == 1
	})

	// The agent's inbox lists it.
	if r := call(t, "GET", base+"/v1/inbox", ann, nil); r.status != http.StatusOK || !strings.Contains(string(r.raw), conv) {
		t.Fatalf("ann's inbox: %d %s", r.status, r.raw)
	}
	// A customer's token is no agent's.
	if r := call(t, "POST", base+"/v1/conversations/"+conv+"/claim", alice, nil); r.status != http.StatusForbidden {
		t.Fatalf("the customer claims: %d %s", r.status, r.raw)
	}

	// 2. Three messages while waiting: stored, pushed to the agent, no bot
	// answer.
	customer := follow(t, base, alice, conv)
	agentFeed := follow(t, base, ann, conv)
	llmBefore = b.llm.Stats().Requests
	waiting := []string{"还在吗？", "请快一点", "我的快递三天没动了"}
	var ids []string
	for _, text := range waiting {
		r := call(t, "POST", base+"/v1/messages", alice, jsonBody(t, map[string]string{"conversation_id": conv, "text": text}))
		if r.status != http.StatusAccepted {
			t.Fatalf("message while waiting: %d %s", r.status, r.raw)
		}
		ids = append(ids, r.body["message_id"].(string))
	}
	eventually(t, "three message.created webhooks", func() bool {
		wh := b.deskWebhooks(t, conv)
		for _, text := range waiting {
			if count(wh, peakdesk.EventMessageCreated+":"+text) != 1 {
				return false
			}
		}
		return true
	})
	eventually(t, "the three messages on the agent's event stream", func() bool { return len(agentFeed.of("message")) == 3 })
	for i, data := range agentFeed.of("message") {
		var m peakdesk.MessageState
		if err := json.Unmarshal([]byte(data), &m); err != nil || m.ID != ids[i] || m.Text != waiting[i] {
			t.Fatalf("agent's message event %d: %s; want %s %q in order", i, data, ids[i], waiting[i])
		}
	}
	c := conversationState(t, base, ann, conv)
	if len(c.Messages) != 4 || len(c.Replies) != 1 {
		t.Fatalf("while waiting: %d messages, %d replies; want 4 and the handoff reply", len(c.Messages), len(c.Replies))
	}
	for i, m := range c.Messages[1:] {
		if m.ID != ids[i] || m.Status != peakdesk.StatusQueued {
			t.Fatalf("message %d: %+v; want %s queued, in order", i, m, ids[i])
		}
	}
	if n := b.llm.Stats().Requests - llmBefore; n != 0 {
		t.Fatalf("%d LLM calls while a human owns the conversation", n)
	}
	if got := customer.of("message"); len(got) != 0 {
		t.Fatalf("the customer's stream shows agent-side message events: %v", got)
	}

	// 3. Two agents claim at once: exactly one wins, the other is told.
	statuses := make([]response, 2)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, tok := range []string{ann, bob} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			statuses[i] = call(t, "POST", base+"/v1/conversations/"+conv+"/claim", tok, nil)
		}()
	}
	close(start)
	wg.Wait()
	winner, loser := ann, bob
	if statuses[0].status != http.StatusOK {
		winner, loser = bob, ann
		statuses[0], statuses[1] = statuses[1], statuses[0]
	}
	if statuses[0].status != http.StatusOK || statuses[1].status != http.StatusConflict ||
		!strings.Contains(string(statuses[1].raw), "assigned to") {
		t.Fatalf("two claims at once: %d %s / %d %s; want one 200 and one 409", statuses[0].status, statuses[0].raw,
			statuses[1].status, statuses[1].raw)
	}
	winnerName := map[string]string{ann: "ann", bob: "bob"}[winner]
	if c := conversationState(t, base, loser, conv); c.State != peakdesk.StateAssigned || c.Agent != winnerName {
		t.Fatalf("after the claims: %s %q; want assigned to %s", c.State, c.Agent, winnerName)
	}
	// The loser cannot reply either.
	if r := call(t, "POST", base+"/v1/conversations/"+conv+"/replies", loser, []byte(`{"text":"me too"}`)); r.status != http.StatusConflict {
		t.Fatalf("the other agent's reply: %d %s", r.status, r.raw)
	}

	// 4. Two replies (one sent twice with the same key: still one).
	first := call(t, "POST", base+"/v1/conversations/"+conv+"/replies", winner, []byte(`{"text":"您好，我是人工客服，正在帮您查"}`),
		"Idempotency-Key", "r1")
	again := call(t, "POST", base+"/v1/conversations/"+conv+"/replies", winner, []byte(`{"text":"您好，我是人工客服，正在帮您查"}`),
		"Idempotency-Key", "r1")
	if first.status != http.StatusCreated || again.status != http.StatusOK || first.body["reply_id"] != again.body["reply_id"] {
		t.Fatalf("reply and its repeat: %d %s / %d %s", first.status, first.raw, again.status, again.raw)
	}
	second := call(t, "POST", base+"/v1/conversations/"+conv+"/replies", winner, []byte(`{"text":"已为您催促快递，请稍候"}`))
	if second.status != http.StatusCreated {
		t.Fatalf("second reply: %d %s", second.status, second.raw)
	}
	// The first reply answered the three waiting messages: GET shows it.
	for _, id := range ids {
		st := waitAnswered(t, base, alice, id, time.Now().Add(10*time.Second))
		if st.Reply == nil || st.Reply.ID != first.body["reply_id"] || st.Reply.Source != peakdesk.SourceAgent {
			t.Fatalf("message %s answered by %+v; want the agent's first reply", id, st.Reply)
		}
	}
	if r := call(t, "POST", base+"/v1/conversations/"+conv+"/resolve", winner, nil); r.status != http.StatusOK ||
		r.body["state"] != string(peakdesk.StateResolved) {
		t.Fatalf("resolve: %d %s", r.status, r.raw)
	}
	eventually(t, "the agent's two replies on the customer's stream", func() bool {
		return len(customer.replies(t)[peakdesk.SourceAgent]) == 2
	})
	eventually(t, "assigned, two reply and resolved webhooks", func() bool {
		wh := b.deskWebhooks(t, conv)
		return count(wh, peakdesk.EventConversationAssigned) == 1 && count(wh, peakdesk.EventConversationResolved) == 1 &&
			count(wh, "reply.created:agent") == 2
	})
	got := customer.replies(t)
	// (The stream replays from its start: the handoff reply, then the
	// agent's.)
	if len(got) != 2 || len(got[peakdesk.SourceHandoff]) != 1 || got[peakdesk.SourceAgent][0].Text != "您好，我是人工客服，正在帮您查" ||
		got[peakdesk.SourceAgent][1].Text != "已为您催促快递，请稍候" || got[peakdesk.SourceAgent][0].Agent != winnerName {
		t.Fatalf("the customer's stream while a human owned the conversation: %+v; want exactly the agent's two replies", got)
	}

	// 5. After resolve the bot answers again.
	r = call(t, "POST", base+"/v1/messages?wait=10s", alice,
		jsonBody(t, map[string]string{"conversation_id": conv, "text": "双11满减怎么算？"}))
	if r.status != http.StatusOK || r.body["status"] != "answered" {
		t.Fatalf("after resolve: %d %s", r.status, r.raw)
	}
	if src := r.body["reply"].(map[string]any)["source"]; src != peakdesk.SourceLLM {
		t.Fatalf("after resolve answered by %v; want the bot (llm)", src)
	}
	if c := conversationState(t, base, ann, conv); c.State != peakdesk.StateBot {
		t.Fatalf("after the bot answered: %s; want bot", c.State)
	}
	wh := b.deskWebhooks(t, conv)
	if n := count(wh, "reply.created:agent"); n != 2 {
		t.Fatalf("agent reply webhooks %d; want 2 (%v)", n, wh)
	}
}

// Every source of a handoff moves the conversation to waiting_human with
// its reason: the LLM's handoff_to_human tool, and the fallback when
// neither the models nor the FAQ can answer.
func TestEndToEndEveryHandoffWaitsForAHuman(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 5 * time.Millisecond})
	p := b.start(t, []string{roleIngest, roleWorker, roleDashboard}, nil)
	base := "http://" + p.Addr()
	ann := bearer(t, "demo", "ann", "agent")

	for _, tc := range []struct {
		name, text string
		outage     bool
		reason     string
	}{
		{"tool", "订单 123456 的退款一直没到，我想和 a real person 谈谈", false, peakdesk.HandoffTool},
		{"fallback", "你们的店铺支持开增值税专用发票吗？", true, peakdesk.HandoffFallback},
	} {
		b.llm.SetFaults(llmsim.Faults{Latency: 5 * time.Millisecond, Outage: tc.outage})
		user := "cust-" + tc.name
		r := call(t, "POST", base+"/v1/messages?wait=10s", bearer(t, "demo", user), jsonBody(t, map[string]string{"text": tc.text}))
		if r.status != http.StatusOK && r.status != http.StatusAccepted {
			t.Fatalf("%s: %d %s", tc.name, r.status, r.raw)
		}
		conv := r.body["conversation_id"].(string)
		waitAnswered(t, base, bearer(t, "demo", user), r.body["message_id"].(string), time.Now().Add(30*time.Second))
		c := conversationState(t, base, ann, conv)
		if c.State != peakdesk.StateWaitingHuman || c.Reason != tc.reason {
			t.Errorf("%s: %s (%s); want waiting_human (%s)", tc.name, c.State, c.Reason, tc.reason)
		}
		in := call(t, "GET", base+"/v1/inbox", ann, nil)
		if !strings.Contains(string(in.raw), fmt.Sprintf("%q", conv)) {
			t.Errorf("%s: not in the inbox: %s", tc.name, in.raw)
		}
	}
}
