package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// handedOver stores a customer's message on a new conversation of shop and
// hands the conversation to a human as a worker does when the customer
// asks for one; it returns the conversation id.
func (b *testBundle) handedOver(t testing.TB, shop string, n int, text string) string {
	t.Helper()
	ctx := context.Background()
	conv := fmt.Sprintf("%032x", 0xc00000+n)
	m := &peakdesk.Message{ID: fmt.Sprintf("%032x", 0xa00000+n), ShopID: shop, ConversationID: conv,
		UserID: fmt.Sprintf("cust%d", n), Text: text, Priority: peakdesk.P1, AcceptedAt: time.Now()}
	c, err := b.db.ClaimMessage(ctx, m, "worker", time.Minute, 20)
	if err != nil || c.Hold == nil {
		t.Fatalf("claim: %+v %v", c, err)
	}
	r := &peakdesk.Reply{ID: fmt.Sprintf("%032x", 0xb00000+n), ShopID: shop, ConversationID: conv,
		MessageIDs: c.Hold.MessageIDs(), Text: "正在为您转接人工客服", Source: peakdesk.SourceHandoff}
	if _, err := b.db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: r,
		Handoff: &storage.HandOff{Reason: peakdesk.HandoffCustomerAsked, Priority: peakdesk.P1}}, time.Minute, 20); err != nil {
		t.Fatal(err)
	}
	return conv
}

// customerWrites stores another message of the customer of conv, as a
// worker does while a human owns the conversation.
func (b *testBundle) customerWrites(t testing.TB, shop, conv, user string, n int, text string) string {
	t.Helper()
	m := &peakdesk.Message{ID: fmt.Sprintf("%032x", 0xd00000+n), ShopID: shop, ConversationID: conv, UserID: user,
		Text: text, Priority: peakdesk.P1, AcceptedAt: time.Now()}
	c, err := b.db.ClaimMessage(context.Background(), m, "worker", time.Minute, 20)
	if err != nil || !c.Human {
		t.Fatalf("claim while a human owns it: %+v %v", c, err)
	}
	if err := b.db.AnnounceHumanMessage(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return m.ID
}

// Who may do what in the inbox: a viewer looks but cannot claim; another
// shop's agent does not see the conversation; of two agents, the second
// to claim is told who has it; only the holder can reply.
func TestInboxRolesAndClaims(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	conv := b.handedOver(t, "demo", 1, "我要人工")

	viewer, _ := b.loggedIn(t, storage.RoleViewer, "")
	if p := viewer.get("/console/inbox"); p.status != http.StatusOK || !strings.Contains(p.body, conv) ||
		strings.Contains(p.body, "/claim") {
		t.Fatalf("viewer's inbox: %d, lists it %v, claim button %v", p.status, strings.Contains(p.body, conv),
			strings.Contains(p.body, "/claim"))
	}
	if p := viewer.post("/console/inbox/"+conv+"/claim", nil); p.status != http.StatusForbidden {
		t.Fatalf("viewer's claim: %d", p.status)
	}
	stranger, _ := b.loggedIn(t, storage.RoleAgent, "other")
	if p := stranger.get("/console/inbox/" + conv); p.status != http.StatusNotFound {
		t.Fatalf("another shop's agent opens it: %d", p.status)
	}
	if p := stranger.get("/console/inbox"); strings.Contains(p.body, conv) {
		t.Fatal("another shop's agent sees it in the inbox")
	}

	ann, annEmail := b.loggedIn(t, storage.RoleAgent, "demo")
	bob, _ := b.loggedIn(t, storage.RoleAgent, "")
	if p := ann.get("/console/"); p.status != http.StatusSeeOther || p.location != "/console/inbox" {
		t.Fatalf("an agent's first page: %d %s; want the inbox", p.status, p.location)
	}
	if p := ann.post("/console/inbox/"+conv+"/claim", nil); p.status != http.StatusSeeOther {
		t.Fatalf("ann's claim: %d %s", p.status, p.body)
	}
	if p := bob.post("/console/inbox/"+conv+"/claim", nil); p.status != http.StatusSeeOther {
		t.Fatalf("bob's claim: %d", p.status)
	}
	if p := bob.get("/console/inbox/" + conv); !strings.Contains(p.body, "assigned to "+annEmail) ||
		strings.Contains(p.body, `id="reply-form"`) {
		t.Fatalf("bob's page after his claim was refused:\n%s", p.body)
	}
	// The refusal in Chinese, for an agent who reads the console in it.
	bob.get("/console/lang?to=zh&back=/console/inbox")
	bob.post("/console/inbox/"+conv+"/claim", nil)
	if p := bob.get("/console/inbox/" + conv); !strings.Contains(p.body, "操作被拒绝：该会话已由 "+annEmail+" 接待") {
		t.Fatalf("bob's refusal in Chinese:\n%s", p.body)
	}
	if p := bob.post("/console/inbox/"+conv+"/reply", url.Values{"text": {"bob here"}}); p.status != http.StatusSeeOther {
		t.Fatalf("bob's reply: %d", p.status)
	}
	if p := ann.post("/console/inbox/"+conv+"/reply", url.Values{"text": {"ann here"}, "key": {"k"}}); p.status != http.StatusSeeOther {
		t.Fatalf("ann's reply: %d", p.status)
	}
	c, err := b.db.Conversation(context.Background(), "demo", conv)
	if err != nil {
		t.Fatal(err)
	}
	var agentReplies []string
	for _, r := range c.Replies {
		if r.Source == peakdesk.SourceAgent {
			agentReplies = append(agentReplies, r.Agent+": "+r.Text)
		}
	}
	annName, _, _ := strings.Cut(annEmail, "@")
	if len(agentReplies) != 1 || agentReplies[0] != annName+": ann here" {
		t.Fatalf("agent replies %v; want ann's only", agentReplies)
	}
	if got := b.audit(t, "conversation.claim"); len(got) != 1 || got[0].Actor != annEmail {
		t.Fatalf("claims audited: %+v", got)
	}
}

// loginAgent logs a new tab in as agent email; an agent lands on the inbox.
func (b *testBundle) loginAgent(t testing.TB, browser context.Context, email string) context.Context {
	t.Helper()
	ctx := tab(t, browser)
	run(t, ctx, "log in",
		chromedp.Navigate(b.url+"/console/login"),
		chromedp.SendKeys("#email", email, chromedp.ByQuery),
		chromedp.SendKeys("#password", testPassword, chromedp.ByQuery),
		chromedp.Click("#login", chromedp.ByQuery),
		chromedp.WaitVisible("#inbox-live", chromedp.ByQuery),
	)
	return ctx
}

// An agent in a real browser: logs in to the inbox, sees a conversation
// handed over appear by itself, claims it, replies, sees the customer's
// next message arrive by itself, and resolves it. The customer got the
// reply as an event, like every reply.
func TestBrowserAgentAnswersAHandedOverCustomer(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	browser := newBrowser(t, 1280, 900)
	email := b.operator(t, storage.RoleAgent, "demo")
	agent := b.loginAgent(t, browser, email)
	if s := textOf(t, agent, "#waiting-count"); s != "0" {
		t.Fatalf("waiting before: %q", s)
	}

	conv := b.handedOver(t, "demo", 7, "我要人工，快递三天没动了")
	waitText(t, agent, "#waiting", "我要人工，快递三天没动了")
	run(t, agent, "claim",
		chromedp.Click(fmt.Sprintf(`tr[data-conv="%s"] button.claim`, conv), chromedp.ByQuery),
		chromedp.WaitVisible("#reply-text", chromedp.ByQuery),
	)
	waitText(t, agent, "#conv-state", "with an agent")
	run(t, agent, "reply",
		chromedp.SendKeys("#reply-text", "您好，我是客服，马上帮您查快递", chromedp.ByQuery),
		chromedp.Click("#send", chromedp.ByQuery),
		chromedp.WaitVisible("#flash", chromedp.ByQuery),
	)
	waitText(t, agent, "#chat", "您好，我是客服，马上帮您查快递")

	later := b.customerWrites(t, "demo", conv, "cust7", 8, "单号是 SF1234")
	waitText(t, agent, "#chat", "单号是 SF1234")
	run(t, agent, "resolve", chromedp.Click("#resolve", chromedp.ByQuery), chromedp.WaitVisible("#flash", chromedp.ByQuery))
	waitText(t, agent, "#conv-state", "resolved")

	// The agent's reply answered the message that waited (the first was
	// answered by the handoff); the customer's later one goes to the bot.
	ctx := context.Background()
	c, err := b.db.Conversation(ctx, "demo", conv)
	if err != nil {
		t.Fatal(err)
	}
	name, _, _ := strings.Cut(email, "@")
	var reply *peakdesk.Reply
	for i := range c.Replies {
		if c.Replies[i].Source == peakdesk.SourceAgent {
			reply = &c.Replies[i]
		}
	}
	if reply == nil || reply.Agent != name || reply.Text != "您好，我是客服，马上帮您查快递" {
		t.Fatalf("replies %+v; want the agent's", c.Replies)
	}
	if c.State != peakdesk.StateResolved {
		t.Fatalf("state %s", c.State)
	}
	if rec, err := b.db.Message(ctx, "demo", later); err != nil || rec.Status != peakdesk.StatusQueued {
		t.Fatalf("the later message %+v %v; want queued for the bot", rec, err)
	}
	s, err := b.js.Stream(ctx, queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	events, err := queue.ConversationEvents(ctx, s, "demo", conv)
	if err != nil || len(events) == 0 || !strings.Contains(string(events[len(events)-1].Data), reply.ID) {
		t.Fatalf("the customer's event stream: %v; want the agent's reply", err)
	}
}

// The inbox in Chinese, in a real browser: the agent switches the console
// to Chinese, sees a conversation handed over appear by itself, claims it,
// replies, sees the customer's answer arrive by itself and hands the
// conversation back to the bot.
func TestBrowserInboxInChinese(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	browser := newBrowser(t, 1280, 900)
	email := b.operator(t, storage.RoleAgent, "demo")
	agent := b.loginAgent(t, browser, email)
	run(t, agent, "switch to Chinese",
		chromedp.Navigate(b.url+"/console/lang?to=zh&back=/console/inbox"),
		chromedp.WaitVisible("#inbox-live", chromedp.ByQuery))
	waitText(t, agent, "h1", "待接待")
	waitText(t, agent, "#waiting", "没有等待人工的顾客")

	conv := b.handedOver(t, "demo", 21, "转人工，我要投诉")
	waitText(t, agent, "#waiting", "转人工，我要投诉")
	waitText(t, agent, "#waiting", "顾客要求人工")
	run(t, agent, "open and claim",
		chromedp.Click(fmt.Sprintf(`tr[data-conv="%s"] a.open`, conv), chromedp.ByQuery),
		chromedp.WaitVisible("#claim", chromedp.ByQuery),
		chromedp.Click("#claim", chromedp.ByQuery),
		chromedp.WaitVisible("#reply-text", chromedp.ByQuery),
	)
	waitText(t, agent, "#flash", "已接入该会话")
	waitText(t, agent, "#conv-state", "客服接待中")
	run(t, agent, "reply",
		chromedp.SendKeys("#reply-text", "您好，请告诉我订单号", chromedp.ByQuery),
		chromedp.Click("#send", chromedp.ByQuery),
		chromedp.WaitVisible("#flash", chromedp.ByQuery),
	)
	waitText(t, agent, "#flash", "已发送")
	name, _, _ := strings.Cut(email, "@")
	waitText(t, agent, "#chat", "客服 "+name)

	b.customerWrites(t, "demo", conv, "cust21", 22, "订单号 20251111")
	waitText(t, agent, "#chat", "订单号 20251111")
	waitText(t, agent, "#chat", "待回复")
	run(t, agent, "hand back", chromedp.Click("#handback", chromedp.ByQuery), chromedp.WaitVisible("#flash", chromedp.ByQuery))
	waitText(t, agent, "#flash", "已交还机器人")
	waitText(t, agent, "#conv-state", "机器人")
	c, err := b.db.Conversation(context.Background(), "demo", conv)
	if err != nil || c.State != peakdesk.StateBot {
		t.Fatalf("after hand back: %+v %v; want the bot's", c, err)
	}
}

// TestInboxScreenshot takes the README's picture of the inbox, with a
// conversation open beside a busy queue:
// go test -run TestInboxScreenshot ./dashboard/ -update-screenshots
func TestInboxScreenshot(t *testing.T) {
	if !*updateScreenshots {
		t.Skip("run with -update-screenshots to write docs/console-inbox*.png")
	}
	b := setup(t, bundleOptions{})
	ctx := context.Background()
	waiting := []struct {
		text, prio string
		ago        time.Duration
	}{
		{"我要人工，退款申请三天了还没处理", "p0", 14 * time.Minute},
		{"Can I talk to a human? My parcel shows delivered but I never got it.", "p1", 9 * time.Minute},
		{"转人工", "p1", 6*time.Minute + 20*time.Second},
		{"优惠券用不了，客服在吗", "p2", 3*time.Minute + 5*time.Second},
		{"I need an agent to change my delivery address", "p2", 40 * time.Second},
	}
	for i, w := range waiting {
		conv := b.handedOver(t, "demo", 100+i, w.text)
		if _, err := b.conn.Exec(ctx, `UPDATE conversations SET waiting_priority = $2,
				waiting_since = now() - $3::interval WHERE id = $1`, conv, w.prio, fmt.Sprintf("%d seconds", int(w.ago.Seconds()))); err != nil {
			t.Fatal(err)
		}
	}
	email := b.operator(t, storage.RoleAgent, "demo")
	mine := b.handedOver(t, "demo", 120, "我要人工，快递显示签收了但我没收到")
	if _, _, err := b.db.ClaimForAgent(ctx, storage.DeskActor{Agent: email, Scope: "demo", Via: "test"}, mine); err != nil {
		t.Fatal(err)
	}
	b.customerWrites(t, "demo", mine, "cust120", 121, "单号 SF1234567890，昨天下午显示签收")

	browser := newBrowser(t, 1440, 900)
	agent := b.loginAgent(t, browser, email)
	dir := filepath.Join("..", "docs")
	shot := func(name, url, waitSel string) {
		var png []byte
		run(t, agent, name, chromedp.Navigate(url), chromedp.WaitVisible(waitSel, chromedp.ByQuery),
			chromedp.CaptureScreenshot(&png))
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shot("console-inbox", b.url+"/console/inbox", "#waiting")
	shot("console-inbox-zh", b.url+"/console/lang?to=zh&back=/console/inbox/"+mine, "#reply-text")
}
