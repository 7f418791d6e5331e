package dashboard

import (
	"fmt"
	"net/http"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

// The agents' inbox (human takeover, docs/architecture.md): the conversations
// waiting for an agent, most urgent and longest waiting first, and the
// agent's own; a conversation's chat with who said what (customer, bot,
// agent), and claim, reply, resolve, hand back. Both pages refresh
// themselves (htmx polling, like the overview). Agents and admins act;
// other roles look. Every change goes through outbox.Desk.

// canAnswer reports whether op may work conversations: agents, and admins
// (who may also resolve or hand back one another agent holds).
func canAnswer(op *storage.ConsoleOperator) bool {
	return op.Role == storage.RoleAgent || op.Role == storage.RoleAdmin
}

// agentOf is op as the Desk knows it.
func agentOf(op *storage.ConsoleOperator) outbox.Agent {
	return outbox.Agent{ID: op.Email, Shop: op.Scope(), Supervisor: op.Role == storage.RoleAdmin, Via: "console"}
}

// answering wraps a page only agents and admins may use.
func answering(fn pageFunc) pageFunc {
	return func(w http.ResponseWriter, r *http.Request, rq *request) error {
		if !canAnswer(rq.op) {
			return peakdesk.Errorf(peakdesk.EPermissionDenied, "only agents answer customers")
		}
		return fn(w, r, rq)
	}
}

// home is the console's first page: the inbox for agents, the overview for
// everyone else.
func (c *Console) home(w http.ResponseWriter, r *http.Request, rq *request) error {
	if rq.op.Role == storage.RoleAgent {
		http.Redirect(w, r, Prefix+"/inbox", http.StatusSeeOther)
		return nil
	}
	return c.overview(w, r, rq)
}

// inboxRow is a conversation of the inbox as the page shows it.
type inboxRow struct {
	storage.InboxEntry
	Waited string // how long it has waited (or, assigned, been with the agent)
	Last   string // the customer's latest message, shortened
}

type inboxData struct {
	In          *storage.Inbox
	Waiting     []inboxRow
	Mine        []inboxRow
	PollSeconds int
	CanAnswer   bool
}

// inboxLimit bounds each list of the inbox.
const inboxLimit = 100

func (c *Console) inboxData(r *http.Request, rq *request) (*inboxData, error) {
	in, err := c.desk.Inbox(r.Context(), agentOf(rq.op), inboxLimit)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	rows := func(entries []storage.InboxEntry, since func(storage.InboxEntry) time.Time) []inboxRow {
		out := make([]inboxRow, len(entries))
		for i, e := range entries {
			out[i] = inboxRow{InboxEntry: e, Waited: waited(now.Sub(since(e))), Last: shorten(e.LastText, 80)}
		}
		return out
	}
	return &inboxData{In: in, PollSeconds: max(int(c.cfg.PollInterval/time.Second), 1), CanAnswer: canAnswer(rq.op),
		Waiting: rows(in.Waiting, func(e storage.InboxEntry) time.Time { return e.WaitingSince }),
		Mine:    rows(in.Mine, func(e storage.InboxEntry) time.Time { return e.AssignedAt })}, nil
}

func (c *Console) inbox(w http.ResponseWriter, r *http.Request, rq *request) error {
	d, err := c.inboxData(r, rq)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "inbox", "", "inbox.title", "inbox", d)
	return nil
}

func (c *Console) inboxLive(w http.ResponseWriter, r *http.Request, rq *request) error {
	d, err := c.inboxData(r, rq)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "inbox", "live", "inbox.title", "inbox", d)
	return nil
}

// chatItem is one line of a conversation's chat.
type chatItem struct {
	At time.Time
	// Who said it: "customer", "bot" or "agent".
	Who     string
	Name    string // the agent's name, or the bot's source
	Text    string
	Pending bool // a customer message no one has answered yet
}

type chatData struct {
	C           *peakdesk.DeskConversation
	Items       []chatItem
	Truncated   bool
	Mine        bool // assigned to the viewer
	CanAnswer   bool
	CanClaim    bool
	CanRelease  bool // resolve or hand back
	Waited      string
	PollSeconds int
	// ReplyKey makes one reply of the form however often it is sent.
	ReplyKey string
}

func (c *Console) chatData(r *http.Request, rq *request) (*chatData, error) {
	a := agentOf(rq.op)
	conv, err := c.desk.Conversation(r.Context(), a, r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	tl, err := c.cfg.DB.ConversationTimeline(r.Context(), rq.op.Scope(), conv.ConversationID, timelineLimit)
	if err != nil {
		return nil, err
	}
	d := &chatData{C: conv, Truncated: tl.Truncated, CanAnswer: canAnswer(rq.op),
		PollSeconds: max(int(c.cfg.PollInterval/time.Second), 1), ReplyKey: GeneratePassword()}
	for _, m := range tl.Messages {
		d.Items = append(d.Items, chatItem{At: m.AcceptedAt, Who: "customer", Name: conv.UserID, Text: m.Text,
			Pending: m.ReplyID == "" && m.Status != string(peakdesk.StatusFailed)})
	}
	for _, rp := range tl.Replies {
		it := chatItem{At: rp.CreatedAt, Who: "bot", Name: rp.Source, Text: rp.Text}
		if rp.Source == peakdesk.SourceAgent {
			it.Who, it.Name = "agent", rp.Agent
		}
		d.Items = append(d.Items, it)
	}
	sort.SliceStable(d.Items, func(i, j int) bool { return d.Items[i].At.Before(d.Items[j].At) })
	d.Mine = conv.State == peakdesk.StateAssigned && conv.Agent == a.ID
	if d.CanAnswer {
		d.CanClaim = conv.State != peakdesk.StateAssigned
		d.CanRelease = conv.State == peakdesk.StateWaitingHuman || d.Mine ||
			(conv.State == peakdesk.StateAssigned && a.Supervisor)
	}
	switch conv.State {
	case peakdesk.StateWaitingHuman:
		d.Waited = waited(c.cfg.Now().Sub(conv.WaitingSince))
	case peakdesk.StateAssigned:
		d.Waited = waited(c.cfg.Now().Sub(conv.AssignedAt))
	}
	return d, nil
}

func (c *Console) inboxConversation(w http.ResponseWriter, r *http.Request, rq *request) error {
	d, err := c.chatData(r, rq)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "inbox_chat", "", "inbox.conv", "inbox", d)
	return nil
}

func (c *Console) inboxConversationLive(w http.ResponseWriter, r *http.Request, rq *request) error {
	d, err := c.chatData(r, rq)
	if err != nil {
		return err
	}
	c.render(w, r, rq, http.StatusOK, "inbox_chat", "live", "inbox.conv", "inbox", d)
	return nil
}

func (c *Console) inboxClaim(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.inboxChange(w, r, rq, "flash.claimed", func(a outbox.Agent, conv string) error {
		_, err := c.desk.Claim(r.Context(), a, conv)
		return err
	})
}

func (c *Console) inboxReply(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.inboxChange(w, r, rq, "flash.replied", func(a outbox.Agent, conv string) error {
		// The form's token makes a double submit one reply.
		_, _, err := c.desk.Reply(r.Context(), a, conv, r.PostFormValue("text"), r.PostFormValue("key"))
		return err
	})
}

func (c *Console) inboxResolve(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.inboxChange(w, r, rq, "flash.resolved", func(a outbox.Agent, conv string) error {
		_, err := c.desk.Resolve(r.Context(), a, conv)
		return err
	})
}

func (c *Console) inboxHandBack(w http.ResponseWriter, r *http.Request, rq *request) error {
	return c.inboxChange(w, r, rq, "flash.handedback", func(a outbox.Agent, conv string) error {
		_, err := c.desk.HandBack(r.Context(), a, conv)
		return err
	})
}

// inboxChange runs fn for the conversation of the path and goes back to
// it, with what happened — or why not (another agent has it) — as a flash.
func (c *Console) inboxChange(w http.ResponseWriter, r *http.Request, rq *request, done string,
	fn func(outbox.Agent, string) error) error {
	conv := r.PathValue("id")
	switch err := fn(agentOf(rq.op), conv); peakdesk.ErrorCode(err) {
	case "":
		c.flash(r, rq.t(done), false)
	case peakdesk.EConflict:
		c.flash(r, c.refusal(r, rq, conv), true)
	case peakdesk.EInvalid:
		c.flash(r, peakdesk.ErrorMessage(err), true)
	default:
		return err
	}
	http.Redirect(w, r, Prefix+"/inbox/"+conv, http.StatusSeeOther)
	return nil
}

// refusal says, in the agent's language, why a change of conversation conv
// was refused: another agent has it, it must be claimed first, or no human
// owns it any more.
func (c *Console) refusal(r *http.Request, rq *request, conv string) string {
	a := agentOf(rq.op)
	d, err := c.desk.Conversation(r.Context(), a, conv)
	switch {
	case err != nil:
		return rq.t("flash.refused")
	case d.State == peakdesk.StateAssigned && d.Agent != a.ID:
		return rq.t("flash.taken", d.Agent)
	case d.State == peakdesk.StateWaitingHuman:
		return rq.t("flash.claimfirst")
	}
	return rq.t("flash.notwithagent", rq.t("cstate."+string(d.State)))
}

// waited writes a wait the way an agent reads it: 45s, 3m05s, 2h07m.
func waited(d time.Duration) string {
	s := int(max(d, 0).Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
}

// shorten cuts s to n characters, marking the cut.
func shorten(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
