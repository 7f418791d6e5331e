package outbox

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// Desk is what human agents do (docs/architecture.md), in the console inbox or
// through the agent API from a shop's own desk: see the inbox, claim a
// conversation (one agent at a time), reply, resolve, hand back to the bot.
// Each change and its desk webhooks commit in one transaction (storage's
// takeover), claims, resolves and hand-backs with an audit record; an
// agent's reply is delivered like every reply — its event on CHAT_EVENTS
// for SSE and polling, its reply.created webhook through the outbox.
// Errors are coded (peakdesk.Error): not_found, conflict, invalid_argument.
type Desk struct {
	cfg     DeskConfig
	log     *slog.Logger
	waitFor prometheus.Histogram
}

// DeskConfig configures a Desk. DB and JS are required.
type DeskConfig struct {
	DB *storage.DB
	JS jetstream.JetStream
	// Memory, when set, forgets a conversation's cached turns once an agent
	// answers or the bot gets the conversation back, so the LLM's next
	// context is rebuilt from Postgres with the agent's words in it.
	Memory *storage.Memory
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives peakdesk_handoff_wait_seconds; defaults to a
	// private registry. One Desk per process (the edge and the console
	// share it).
	Registerer prometheus.Registerer
}

// NewDesk returns a Desk for cfg.
func NewDesk(cfg DeskConfig) (*Desk, error) {
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.DB == nil || cfg.JS == nil {
		return nil, errors.New("outbox: desk config: DB and JS are required")
	}
	d := &Desk{cfg: cfg, log: cfg.Logger.With("component", "desk"),
		waitFor: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_handoff_wait_seconds",
			Help:    "How long a conversation handed to a human waited until an agent claimed it.",
			Buckets: []float64{5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200},
		})}
	if err := cfg.Registerer.Register(d.waitFor); err != nil {
		return nil, fmt.Errorf("outbox: desk metrics: %w", err)
	}
	return d, nil
}

// Agent is who calls a Desk operation.
type Agent struct {
	// ID identifies the agent: a console operator's e-mail, an API token's
	// subject. The conversations an agent claims are assigned to it.
	ID string
	// Name signs the agent's replies to customers; default: ID up to an @
	// (an operator's e-mail address is not shown to customers).
	Name string
	// Shop is the agent's shop, or "*" for a platform agent.
	Shop string
	// Supervisor may resolve or hand back a conversation another agent
	// holds (a console admin).
	Supervisor bool
	// Via names where the agent works, for the audit log: "console", "api".
	Via string
}

func (a Agent) actor() (storage.DeskActor, error) {
	if a.ID == "" || len(a.ID) > 254 || (a.Shop != storage.AllShops && !shopIDRe.MatchString(a.Shop)) {
		return storage.DeskActor{}, peakdesk.Errorf(peakdesk.EPermissionDenied, "not an agent")
	}
	return storage.DeskActor{Agent: a.ID, Scope: a.Shop, Supervisor: a.Supervisor, Via: a.Via}, nil
}

func (a Agent) name() string {
	if a.Name != "" {
		return a.Name
	}
	name, _, _ := strings.Cut(a.ID, "@")
	return cmp.Or(name, a.ID)
}

var convIDRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

func checkConv(conv string) error {
	if !convIDRe.MatchString(conv) {
		return peakdesk.Errorf(peakdesk.ENotFound, "conversation not found")
	}
	return nil
}

// Inbox returns a's inbox: the conversations waiting for an agent (most
// urgent and longest waiting first) and those assigned to a, up to limit
// of each.
func (d *Desk) Inbox(ctx context.Context, a Agent, limit int) (*storage.Inbox, error) {
	act, err := a.actor()
	if err != nil {
		return nil, err
	}
	return d.cfg.DB.Inbox(ctx, act.Scope, act.Agent, min(max(limit, 1), MaxPageSize))
}

// Conversation returns conversation conv's takeover state, if a may see it.
func (d *Desk) Conversation(ctx context.Context, a Agent, conv string) (*peakdesk.DeskConversation, error) {
	act, err := a.actor()
	if err != nil {
		return nil, err
	}
	if err := checkConv(conv); err != nil {
		return nil, err
	}
	return d.cfg.DB.DeskConversation(ctx, act.Scope, conv)
}

// Claim assigns conversation conv to a: one waiting for an agent, or one
// the bot has (a takeover). A conversation another agent holds is refused
// with a conflict naming the holder; a's own is returned as it is.
func (d *Desk) Claim(ctx context.Context, a Agent, conv string) (*peakdesk.DeskConversation, error) {
	act, err := a.actor()
	if err != nil {
		return nil, err
	}
	if err := checkConv(conv); err != nil {
		return nil, err
	}
	c, waited, err := d.cfg.DB.ClaimForAgent(ctx, act, conv)
	if err != nil {
		return nil, err
	}
	if waited > 0 {
		d.waitFor.Observe(waited.Seconds())
	}
	d.log.InfoContext(ctx, "conversation claimed", "shop", c.ShopID, "conversation_id", conv, "via", a.Via,
		"waited", waited.Round(time.Second).String())
	return c, nil
}

// Reply posts text on conversation conv as a's reply: it answers every
// customer message no one answered yet and is delivered like every reply
// (event, webhook). Only the agent the conversation is assigned to may
// reply (conflict otherwise). A non-empty key makes a repeat of the call
// return the first reply instead of posting a second.
func (d *Desk) Reply(ctx context.Context, a Agent, conv, text, key string) (r *peakdesk.Reply, stored bool, err error) {
	act, err := a.actor()
	if err != nil {
		return nil, false, err
	}
	if err := checkConv(conv); err != nil {
		return nil, false, err
	}
	if text, err = peakdesk.CheckText("text", text); err != nil {
		return nil, false, err
	}
	r = &peakdesk.Reply{ID: replyIDFor(a, conv, key), Text: text, Agent: a.name()}
	if stored, err = d.cfg.DB.AgentReply(ctx, act, conv, r, ReplyWebhook); err != nil {
		return nil, false, err
	}
	// Stored: deliver it now. Should this fail or the process die first,
	// the workers' sweeper publishes it (the reply is event pending).
	pubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := queue.PublishReplyEvent(pubCtx, d.cfg.JS, r); err != nil {
		d.log.WarnContext(ctx, "publishing an agent's reply event failed; the sweeper will", "reply_id", r.ID, "err", err)
	} else if err := d.cfg.DB.EventPublished(pubCtx, r.ShopID, r.ID); err != nil {
		d.log.WarnContext(ctx, "noting an agent's reply event published failed", "reply_id", r.ID, "err", err)
	}
	d.forget(ctx, r.ShopID, conv)
	return r, stored, nil
}

// replyIDFor is a new reply id, or with an idempotency key one derived from
// the agent, the conversation and the key.
func replyIDFor(a Agent, conv, key string) string {
	if key == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}
	h := sha256.Sum256([]byte("agent-reply\x00" + a.Shop + "\x00" + a.ID + "\x00" + conv + "\x00" + key))
	return hex.EncodeToString(h[:16])
}

// Resolve marks conversation conv resolved: by the agent who holds it, a
// supervisor, or any agent while it still waits. What no agent answered
// goes back to the bot; the customer's next message is the bot's.
func (d *Desk) Resolve(ctx context.Context, a Agent, conv string) (*peakdesk.DeskConversation, error) {
	return d.release(ctx, a, conv, d.cfg.DB.ResolveConversation)
}

// HandBack gives conversation conv back to the bot (who may: as Resolve).
func (d *Desk) HandBack(ctx context.Context, a Agent, conv string) (*peakdesk.DeskConversation, error) {
	return d.release(ctx, a, conv, d.cfg.DB.HandBack)
}

func (d *Desk) release(ctx context.Context, a Agent, conv string,
	fn func(context.Context, storage.DeskActor, string) (*peakdesk.DeskConversation, error)) (*peakdesk.DeskConversation, error) {
	act, err := a.actor()
	if err != nil {
		return nil, err
	}
	if err := checkConv(conv); err != nil {
		return nil, err
	}
	c, err := fn(ctx, act, conv)
	if err != nil {
		return nil, err
	}
	d.forget(ctx, c.ShopID, conv)
	d.log.InfoContext(ctx, "conversation back to the bot", "shop", c.ShopID, "conversation_id", conv,
		"state", string(c.State), "via", a.Via)
	return c, nil
}

// forget drops conv's cached turns (best effort: they expire anyway).
func (d *Desk) forget(ctx context.Context, shop, conv string) {
	if d.cfg.Memory == nil {
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	d.cfg.Memory.Forget(fctx, shop, conv)
}
