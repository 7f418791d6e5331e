package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/answer"
	"github.com/peakdesk/peakdesk/workers/llm"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// Composing a turn's reply: the Answerer's answer to the turn's messages
// together, the tools it may call, the actions they promise and what is
// stored with the reply in its transaction.

// turnAnswer is what compose produced for a turn.
type turnAnswer struct {
	// Reply is the one reply to the turn's messages.
	Reply *peakdesk.Reply
	// Handoff, when set, hands the conversation to a human agent with the
	// reply: the customer asked for one, a tool did, or the reply is the
	// handoff reply.
	Handoff *storage.HandOff

	mu sync.Mutex
	// actions are the outbox actions the reply promises (the tools'); they
	// are stored in the reply's transaction (ReplyID and ConversationID
	// filled in).
	actions []peakdesk.Action
	// toolHandoff is why a tool asked for a human (peakdesk.HandoffTool,
	// or HandoffPolicy when a policy refused a promise); "" when none did.
	toolHandoff string
}

// inTx stores what comes with a's reply in its transaction: the actions the
// tools promised and the reply webhook (for shops with a webhook URL).
func (a *turnAnswer) inTx() func(context.Context, pgx.Tx, *peakdesk.Reply) error {
	return func(ctx context.Context, tx pgx.Tx, r *peakdesk.Reply) error {
		a.mu.Lock()
		actions := a.actions
		a.mu.Unlock()
		for i := range actions {
			actions[i].ReplyID = r.ID
			actions[i].ConversationID = cmp.Or(actions[i].ConversationID, r.ConversationID)
		}
		if _, err := storage.InsertActions(ctx, tx, actions); err != nil {
			return err
		}
		// The webhook tells the shop what its customer was told; whether a
		// partial text preceded it is the chat client's business.
		hooked := *r
		hooked.ReplacesPartial = false
		wh, err := outbox.ReplyWebhook(&hooked)
		if err != nil {
			return err
		}
		_, err = storage.InsertReplyWebhook(ctx, tx, wh)
		return err
	}
}

// callTool returns the Request.CallTool of a turn: it runs the tool for the
// turn's shop, user, conversation and message (sharing the turn's allowance
// of one money promise) and keeps the actions the tool promised for the
// reply's transaction. They are kept even if the LLM fails afterwards and
// the turn ends in a fallback: the tool checked them and the customer is
// told a human follows up.
func (a *turnAnswer) callTool(tools *outbox.Turn) func(context.Context, string, json.RawMessage) (answer.ToolOutcome, error) {
	return func(ctx context.Context, name string, args json.RawMessage) (answer.ToolOutcome, error) {
		res, err := tools.Call(ctx, name, args)
		if err != nil {
			return answer.ToolOutcome{}, err
		}
		a.mu.Lock()
		a.actions = append(a.actions, res.Actions...)
		switch {
		case res.Handoff && res.Refused:
			a.toolHandoff = peakdesk.HandoffPolicy
		case res.Handoff && a.toolHandoff == "":
			a.toolHandoff = peakdesk.HandoffTool
		}
		a.mu.Unlock()
		return answer.ToolOutcome{Text: res.Text, Handoff: res.Handoff}, nil
	}
}

// compose produces the one reply to hold's messages: the Answerer's answer
// to all of them together (the LLM's, or its fallback: FAQ, handoff), so no
// message goes unanswered — or, when the customer asks for a human, the
// handoff at once, without the Answerer. This is the single place that
// turns messages into a reply (and the actions it promises). It fails only
// when ctx ends or the conversation memory cannot be read.
func (w *Worker) compose(ctx context.Context, log *slog.Logger, hold *storage.Hold) (*turnAnswer, error) {
	msgs := hold.Messages
	last := msgs[len(msgs)-1]
	reply := &peakdesk.Reply{
		ID:             newID(),
		ShopID:         hold.ShopID,
		ConversationID: hold.ConversationID,
		UserID:         last.UserID,
		MessageIDs:     hold.MessageIDs(),
	}
	prio := peakdesk.P2
	lines := make([]string, len(msgs))
	askedForHuman := false
	words := w.words.of(ctx, hold.ShopID)
	for i, m := range msgs {
		lines[i] = m.Text
		if m.Priority.Rank() < prio.Rank() {
			prio = m.Priority
		}
		askedForHuman = askedForHuman || asksForHuman(m.Text, words)
	}
	if askedForHuman {
		reply.Text = texts.Text(texts.Detect(strings.Join(lines, "\n"), texts.DefaultLang), texts.HandoffRequested, nil)
		reply.Source = peakdesk.SourceHandoff
		log.Debug("the customer asked for a human")
		return &turnAnswer{Reply: reply, Handoff: &storage.HandOff{Reason: peakdesk.HandoffCustomerAsked, Priority: prio}}, nil
	}
	history, err := w.cfg.Memory.Load(ctx, hold.ShopID, hold.ConversationID, reply.MessageIDs)
	if err != nil {
		return nil, err
	}
	if len(history) > w.cfg.HistoryTurns {
		history = history[len(history)-w.cfg.HistoryTurns:]
	}
	req := answer.Request{
		Shop:           hold.ShopID,
		ConversationID: hold.ConversationID,
		User:           last.UserID,
		MessageIDs:     reply.MessageIDs,
		Priority:       prio,
		// The budget counts from now, not from acceptance: after a backlog
		// the queued messages still get the LLM's answer.
		Deadline: time.Now().Add(w.cfg.Budgets[prio]),
		History:  make([]llm.Turn, len(history)),
		Question: strings.Join(lines, "\n"),
	}
	for i, t := range history {
		req.History[i] = llm.Turn{Role: llm.Role(t.Role), Text: t.Text}
	}
	ta := &turnAnswer{Reply: reply}
	if len(w.tools) > 0 && offerTools(prio, len(history) > 0, req.Question) {
		req.Tools = w.tools
		req.CallTool = ta.callTool(w.cfg.Tools.Turn(outbox.ToolCall{Shop: hold.ShopID, User: last.UserID,
			ConversationID: hold.ConversationID, MessageID: last.ID,
			Lang: texts.Detect(req.Question, texts.DefaultLang), AskedAt: last.AcceptedAt}))
	}
	// Order questions can be answered from the shop's data (orders.go).
	if w.cfg.Tools != nil {
		if q, ok := outbox.ParseOrderQuestion(req.Question); ok {
			req.Orders = ta.orders(w.cfg.Tools, outbox.DirectCall{Shop: hold.ShopID, User: last.UserID,
				ConversationID: hold.ConversationID, MessageID: last.ID,
				Lang: texts.Detect(req.Question, texts.DefaultLang), Question: q, AskedAt: last.AcceptedAt}, log)
		}
	}
	// Urgent answers stream to the client as they are written; p2, the
	// bulk of a peak and mostly general questions, arrives whole.
	var stream *partials
	if prio != peakdesk.P2 {
		stream = w.newPartials(reply)
		req.OnDelta = stream.add
	}

	// The provider budget and the adaptive limit apply in the LLM client's
	// transport, to every call the Answerer makes for this priority.
	ans, err := w.cfg.Answerer.Answer(withPriority(ctx, prio), req)
	if err != nil {
		return nil, err
	}
	reply.Text, reply.Source, reply.Model = ans.Text, ans.Source, ans.Model
	reply.PromptTokens, reply.CompletionTokens = ans.PromptTokens, ans.CompletionTokens
	reply.CostMicroUSD = ans.CostMicroUSD
	reply.ReplacesPartial = ans.StreamBroken && stream.shown()
	reply.FollowUp = ta.followUp()
	ta.mu.Lock()
	why := ta.toolHandoff
	ta.mu.Unlock()
	switch {
	case ans.Source == peakdesk.SourceHandoff:
		// Neither the models nor the FAQ could answer (or a tool's
		// handoff came before they failed).
		ta.Handoff = &storage.HandOff{Reason: cmp.Or(why, peakdesk.HandoffFallback), Priority: prio}
	case ans.Handoff:
		ta.Handoff = &storage.HandOff{Reason: cmp.Or(why, peakdesk.HandoffTool), Priority: prio}
	}
	log.Debug("answered", "source", ans.Source, "tools", ans.ToolCalls, "handoff", ta.Handoff != nil)
	return ta, nil
}

// offerTools decides whether a turn is offered the tools. A request with
// tools is never coalesced with identical questions nor answered from the
// cache, so a general question — p2 (pre-sale, general), opening its
// conversation, without an order-like number — goes without them: those
// are the bursts coalescing exists for. Urgent turns (refunds, orders,
// logistics) and turns that continue a conversation get them.
func offerTools(prio peakdesk.Priority, hasHistory bool, question string) bool {
	return prio != peakdesk.P2 || hasHistory || hasDigitRun(question, 5)
}

// hasDigitRun reports whether s has n ASCII or full-width digits in a row.
func hasDigitRun(s string, n int) bool {
	run := 0
	for _, r := range s {
		if (r >= '0' && r <= '9') || (r >= '０' && r <= '９') {
			if run++; run >= n {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}
