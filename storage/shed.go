package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/peakdesk/peakdesk"
)

// ShedAnswer is a message the edge shed and answered from the FAQ at once,
// with the answer it gave.
type ShedAnswer struct {
	Message *peakdesk.Message
	Reply   *peakdesk.Reply
	// Trace is the W3C traceparent of the request, for the webhook action.
	Trace string
	// Actions are what the reply promises (an order question's
	// order.followup), stored with it when it is the message's answer.
	// Never money: a shed answer carries no grant.
	Actions []peakdesk.Action
}

// ShedOutcome is what SaveShedAnswers made of one ShedAnswer.
type ShedOutcome int

const (
	// ShedStored: the message is stored answered by this reply — now, or by
	// an earlier attempt at the same answer.
	ShedStored ShedOutcome = iota
	// ShedRepeat: the message was stored already with another reply or
	// none (a repeat of a message a worker has); nothing was stored.
	ShedRepeat
	// ShedForeign: the conversation belongs to another shop or user;
	// nothing was stored.
	ShedForeign
	// ShedHuman: a human agent owns the conversation (waiting_human or
	// assigned), so the bot says nothing: the message is stored for the
	// agent (status human, no reply) — now, or by an earlier attempt — and
	// the answer is not stored. The caller announces the message to the
	// agents (AnnounceHumanMessage, idempotent) and publishes no reply
	// event.
	ShedHuman
)

func (o ShedOutcome) String() string {
	switch o {
	case ShedStored:
		return "stored"
	case ShedRepeat:
		return "repeat"
	case ShedForeign:
		return "foreign"
	case ShedHuman:
		return "human"
	}
	return "unknown"
}

// SaveShedAnswers stores many shed answers in one transaction — each
// message already answered by its reply, the reply's webhook action when
// the shop has a webhook URL, the actions the reply promises — and returns each one's outcome, in order. It
// is idempotent by message id and reply id: a message stored before is not
// stored again, and an answer stored before is reported stored, so it may
// be called more than once with the same answers (a redelivered batch).
//
// A message whose conversation a human agent owns is stored for the agent
// without its answer (ShedHuman), as a worker stores it (ClaimMessage's
// Human): the bot stays silent in a conversation a human owns. The edge
// does not shed such a message to the FAQ in the first place (it reads the
// takeover state ListenHumanOwned keeps); this is the backstop for a
// takeover that commits between the edge's look and this transaction. By
// then the customer may have read the FAQ answer in the edge's response.
// It is still not stored, deliberately: stored answering the message it
// would take the message from the agent's inbox and go to the shop's
// webhook — the bot speaking again in a human's conversation —, and stored
// answering nothing it would stand in the transcript as the bot's word
// after the handover. The agent answers the message; the window is the
// notification's latency (milliseconds).
//
// webhook builds a reply's webhook action (nil: none). The whole batch is
// one pipeline of statements, so its cost is a few round trips whatever
// its size.
func (db *DB) SaveShedAnswers(ctx context.Context, answers []ShedAnswer,
	webhook func(*peakdesk.Reply) (peakdesk.Action, error)) ([]ShedOutcome, error) {
	if len(answers) == 0 {
		return nil, nil
	}
	// Rows are written in id order, so that concurrent batches lock
	// conversations and messages in the same order.
	order := make([]int, len(answers))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(answers[a].Message.ID, answers[b].Message.ID) })

	n := len(answers)
	var (
		ids, shops, convs, users, texts, channels, prios = make([]string, n), make([]string, n), make([]string, n),
			make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		clientIDs, metadata          = make([]*string, n), make([]*string, n)
		accepted, created            = make([]time.Time, n), make([]time.Time, n)
		replyIDs, replyTexts, source = make([]string, n), make([]string, n), make([]string, n)
		convSeen                     = map[string]bool{}
		convIDs, convShops, convUser []string
		hookShops, hookConvs         []string
		hookReplies, hookMsgs        []string
		hookPayloads, hookKeys       []string
		hookTraces                   []string
		hookMax                      []int32
		promised                     promisedActions
	)
	for j, i := range order {
		m, r := answers[i].Message, answers[i].Reply
		if r.ShopID != m.ShopID || r.ConversationID != m.ConversationID {
			return nil, fmt.Errorf("storage: save shed answers: reply %s is not on message %s's conversation", r.ID, m.ID)
		}
		ids[j], shops[j], convs[j], users[j], texts[j] = m.ID, m.ShopID, m.ConversationID, m.UserID, m.Text
		channels[j], prios[j], accepted[j] = m.Channel, string(m.Priority), m.AcceptedAt
		if m.ClientMsgID != "" {
			clientIDs[j] = &m.ClientMsgID
		}
		if len(m.Metadata) > 0 {
			s := string(m.Metadata)
			metadata[j] = &s
		}
		replyIDs[j], replyTexts[j], source[j], created[j] = r.ID, r.Text, r.Source, r.CreatedAt
		if !convSeen[m.ConversationID] {
			// One row per conversation: an upsert may not touch a row twice.
			convSeen[m.ConversationID] = true
			convIDs, convShops, convUser = append(convIDs, m.ConversationID), append(convShops, m.ShopID), append(convUser, m.UserID)
		}
		for _, a := range answers[i].Actions {
			// The answer's own shop and conversation, whatever the record says.
			a.ShopID, a.ReplyID, a.ConversationID, a.Trace = m.ShopID, r.ID, r.ConversationID, cmp.Or(a.Trace, answers[i].Trace)
			if err := promised.add(m.ID, &a); err != nil {
				return nil, fmt.Errorf("storage: save shed answers: message %s: %w", m.ID, err)
			}
		}
		if webhook != nil {
			a, err := webhook(r)
			if err != nil {
				return nil, fmt.Errorf("storage: save shed answers: %w", err)
			}
			if err := checkNewAction(&a); err != nil {
				return nil, err
			}
			hookShops, hookConvs, hookReplies, hookMsgs = append(hookShops, a.ShopID), append(hookConvs, a.ConversationID),
				append(hookReplies, a.ReplyID), append(hookMsgs, m.ID)
			hookPayloads, hookKeys = append(hookPayloads, string(a.Payload)), append(hookKeys, a.IdempotencyKey)
			hookTraces, hookMax = append(hookTraces, cmp.Or(a.Trace, answers[i].Trace)), append(hookMax, int32(a.MaxAttempts))
		}
	}
	sortedConvs := make([]int, len(convIDs))
	for i := range sortedConvs {
		sortedConvs[i] = i
	}
	slices.SortFunc(sortedConvs, func(a, b int) int { return cmp.Compare(convIDs[a], convIDs[b]) })
	cIDs, cShops, cUsers := make([]string, len(convIDs)), make([]string, len(convIDs)), make([]string, len(convIDs))
	for j, i := range sortedConvs {
		cIDs[j], cShops[j], cUsers[j] = convIDs[i], convShops[i], convUser[i]
	}

	type storedMsg struct{ reply, status string }
	stored := map[string]storedMsg{} // message id → its reply id and status
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		// 1. The conversations, touched only when they are the same shop's
		//    and user's. The upsert locks each row (as an UPDATE does) until
		//    the commit, and every takeover state change updates the row
		//    (or locks it FOR UPDATE) first: so the state the statements
		//    below read is the state at the commit — a claim, handoff or
		//    handback waits for this transaction or this one for it, none
		//    slips between. Rows are locked in id order (no deadlock
		//    between batches).
		b.Queue(`INSERT INTO conversations (id, shop_id, user_id)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
			ON CONFLICT (id) DO UPDATE SET updated_at = now()
			WHERE conversations.shop_id = excluded.shop_id AND conversations.user_id = excluded.user_id`,
			cIDs, cShops, cUsers)
		// 2. The replies of messages not stored yet, on conversations of
		//    their own shop and user that the bot has (not a human).
		b.Queue(`INSERT INTO replies (id, shop_id, conversation_id, text, source, created_at)
			SELECT t.r, t.s, t.c, t.tx, t.src, t.ca
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
				$8::timestamptz[]) AS t(m, r, s, c, u, tx, src, ca)
			WHERE NOT EXISTS (SELECT 1 FROM messages WHERE id = t.m)
			AND EXISTS (SELECT 1 FROM conversations WHERE id = t.c AND shop_id = t.s AND user_id = t.u
				AND state NOT IN ('waiting_human', 'assigned'))
			ON CONFLICT (id) DO NOTHING`,
			ids, replyIDs, shops, convs, users, replyTexts, source, created)
		// 3. The messages: answered wherever their reply went in; for the
		//    agent (status human, no reply) on conversations of their own
		//    shop and user that a human owns.
		b.Queue(`INSERT INTO messages (id, shop_id, conversation_id, user_id, text, channel, priority,
				client_msg_id, metadata, status, reply_id, accepted_at, answered_at)
			SELECT t.m, t.s, t.c, t.u, t.tx, t.ch, t.p, t.k, t.md::jsonb,
				CASE WHEN r.id IS NULL THEN 'human' ELSE 'answered' END, r.id, t.at,
				CASE WHEN r.id IS NULL THEN NULL ELSE t.ca END
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
				$8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[])
				AS t(m, s, c, u, tx, ch, p, k, md, r, at, ca)
			LEFT JOIN replies r ON r.id = t.r AND r.shop_id = t.s
			WHERE r.id IS NOT NULL OR EXISTS (SELECT 1 FROM conversations c WHERE c.id = t.c AND c.shop_id = t.s
				AND c.user_id = t.u AND c.state IN ('waiting_human', 'assigned'))
			ON CONFLICT (id) DO NOTHING`,
			ids, shops, convs, users, texts, channels, prios, clientIDs, metadata, replyIDs, accepted, created)
		// 4. A reply whose message another copy got first answers nothing:
		//    it goes.
		b.Queue(`DELETE FROM replies r USING unnest($1::text[], $2::text[]) AS t(r, s)
			WHERE r.id = t.r AND r.shop_id = t.s AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.reply_id = r.id)`,
			replyIDs, shops)
		// 5. The webhooks of the answers that are the messages' (again: the
		//    idempotency key keeps one), for shops with a webhook URL.
		if len(hookKeys) > 0 {
			b.Queue(`INSERT INTO outbox_actions (shop_id, conversation_id, reply_id, kind, payload,
					idempotency_key, max_attempts, trace)
				SELECT t.s, t.c, t.r, $9, t.p::jsonb, t.k, t.mx, t.tr
				FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[])
					AS t(s, c, r, m, p, k, mx, tr)
				WHERE EXISTS (SELECT 1 FROM messages WHERE id = t.m AND shop_id = t.s AND reply_id = t.r)
				AND EXISTS (SELECT 1 FROM shop_api_settings WHERE shop_id = t.s AND webhook_url <> '')
				ON CONFLICT (idempotency_key) DO NOTHING`,
				hookShops, hookConvs, hookReplies, hookMsgs, hookPayloads, hookKeys, hookMax, hookTraces,
				string(peakdesk.ActionWebhookDeliver))
		}
		// 5b. What the answers that are their messages' promise.
		if len(promised.keys) > 0 {
			b.Queue(`INSERT INTO outbox_actions (shop_id, conversation_id, reply_id, kind, payload,
					idempotency_key, max_attempts, next_attempt_at, trace)
				SELECT t.s, t.c, t.r, t.kd, t.p::jsonb, t.k, t.mx, coalesce(t.na, now()), t.tr
				FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
					$8::int[], $9::timestamptz[], $10::text[]) AS t(s, c, r, m, kd, p, k, mx, na, tr)
				WHERE EXISTS (SELECT 1 FROM messages WHERE id = t.m AND shop_id = t.s AND reply_id = t.r)
				ON CONFLICT (idempotency_key) DO NOTHING`,
				promised.shops, promised.convs, promised.replies, promised.msgs, promised.kinds, promised.payloads,
				promised.keys, promised.maxAttempts, promised.next, promised.traces)
		}
		// 6. What each message is answered by now, and its status.
		b.Queue(`SELECT m.id, coalesce(m.reply_id, ''), m.status FROM messages m
			JOIN unnest($1::text[], $2::text[]) AS t(m, s) ON m.id = t.m AND m.shop_id = t.s`, ids, shops)
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		steps := 4
		if len(hookKeys) > 0 {
			steps++
		}
		if len(promised.keys) > 0 {
			steps++
		}
		for range steps {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		var id, reply, status string
		_, err = pgx.ForEachRow(rows, []any{&id, &reply, &status}, func() error {
			stored[id] = storedMsg{reply, status}
			return nil
		})
		if err != nil {
			return err
		}
		return br.Close()
	})
	if err != nil {
		return nil, fmt.Errorf("storage: save shed answers: %w", err)
	}
	out := make([]ShedOutcome, len(answers))
	for i, a := range answers {
		switch st, ok := stored[a.Message.ID]; {
		case !ok:
			out[i] = ShedForeign
		case st.reply == a.Reply.ID:
			out[i] = ShedStored
		case st.reply == "" && st.status == "human":
			// Kept for the agent, by this call or an earlier one (or a
			// worker's copy of the message: announcing again is harmless).
			out[i] = ShedHuman
		default:
			out[i] = ShedRepeat
		}
	}
	return out, nil
}

// promisedActions are the actions of a batch of shed answers, as columns.
type promisedActions struct {
	shops, convs, replies, msgs, kinds, payloads, keys, traces []string
	maxAttempts                                                []int32
	next                                                       []*time.Time
}

// add adds a, promised by the answer to message msg.
func (p *promisedActions) add(msg string, a *peakdesk.Action) error {
	if err := checkNewAction(a); err != nil {
		return err
	}
	if a.GrantID != 0 || a.Kind == peakdesk.ActionCouponIssue || a.Kind == peakdesk.ActionRefundRequest {
		return fmt.Errorf("storage: save shed answers: a shed answer cannot promise %s", a.Kind)
	}
	p.shops, p.convs, p.replies, p.msgs = append(p.shops, a.ShopID), append(p.convs, a.ConversationID),
		append(p.replies, a.ReplyID), append(p.msgs, msg)
	p.kinds, p.payloads, p.keys, p.traces = append(p.kinds, string(a.Kind)), append(p.payloads, string(a.Payload)),
		append(p.keys, a.IdempotencyKey), append(p.traces, a.Trace)
	p.maxAttempts = append(p.maxAttempts, int32(a.MaxAttempts))
	var next *time.Time
	if !a.NextAttemptAt.IsZero() {
		next = &a.NextAttemptAt
	}
	p.next = append(p.next, next)
	return nil
}

// HumanOwnedChannel is the LISTEN/NOTIFY channel on which every move of a
// conversation between the bot and a human agent is announced (in the
// transaction that moves it: handoff, an agent's claim of a bot
// conversation, resolve, handback), so that an edge can keep in memory
// which conversations a human owns (ListenHumanOwned) and never answer
// their messages from the FAQ while it sheds load. Such moves are rare, so
// the NOTIFY's commit-time lock costs the hot paths nothing.
const HumanOwnedChannel = "peakdesk_human_owned"

// notifyHumanOwned announces, in tx, that conversation conv of shop is now
// a human's (human) or the bot's.
func notifyHumanOwned(ctx context.Context, tx pgx.Tx, shop, conv string, human bool) error {
	flag := "0"
	if human {
		flag = "1"
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, HumanOwnedChannel, flag+" "+conv+" "+shop); err != nil {
		return fmt.Errorf("notify human owned: %w", err)
	}
	return nil
}

// HumanOwnership says whether a human agent owns a conversation.
type HumanOwnership struct {
	ShopID, ConversationID string
	Human                  bool
}

// HumanOwnedListener follows the conversations human agents own, on a
// connection of its own. It is not safe for concurrent use.
type HumanOwnedListener struct {
	conn *pgx.Conn
}

// ListenHumanOwned opens a dedicated connection that listens on
// HumanOwnedChannel, and returns it with the conversations a human owns
// now (waiting_human or assigned). Every move committed after the listener
// was in place arrives by Next, in commit order — so a move committed
// just before the snapshot may come after it, and applying the moves in
// order still ends in the committed state.
func (db *DB) ListenHumanOwned(ctx context.Context) (*HumanOwnedListener, []HumanOwnership, error) {
	conn, err := db.listen(ctx, HumanOwnedChannel)
	if err != nil {
		return nil, nil, fmt.Errorf("storage: listen human owned: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT shop_id, id FROM conversations WHERE state IN ('waiting_human', 'assigned')`)
	var owned []HumanOwnership
	if err == nil {
		owned, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (HumanOwnership, error) {
			o := HumanOwnership{Human: true}
			return o, row.Scan(&o.ShopID, &o.ConversationID)
		})
	}
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, nil, fmt.Errorf("storage: listen human owned: %w", err)
	}
	return &HumanOwnedListener{conn: conn}, owned, nil
}

// Next returns the next move. It fails when ctx ends or the connection
// does (then Close it and listen again: what moved meanwhile was missed).
//
// A connection can die without a word — a NAT or a proxy drops it, a
// failover moves the server, and no reset ever arrives — and a listener
// waiting on it would wait for good while moves go by. So after idle
// without a notification Next pings the server (a round trip, answered
// within min(idle, 5 s)) and fails if it does not answer. idle ≤ 0 waits
// without checking.
func (l *HumanOwnedListener) Next(ctx context.Context, idle time.Duration) (HumanOwnership, error) {
	for {
		n, err := l.wait(ctx, idle)
		if err != nil {
			return HumanOwnership{}, err
		}
		flag, rest, ok1 := strings.Cut(n.Payload, " ")
		conv, shop, ok2 := strings.Cut(rest, " ")
		if ok1 && ok2 && (flag == "0" || flag == "1") {
			return HumanOwnership{ShopID: shop, ConversationID: conv, Human: flag == "1"}, nil
		}
	}
}

// wait returns the next notification, checking the connection after each
// idle period without one.
func (l *HumanOwnedListener) wait(ctx context.Context, idle time.Duration) (*pgconn.Notification, error) {
	if idle <= 0 {
		n, err := l.conn.WaitForNotification(ctx)
		if err != nil {
			return nil, fmt.Errorf("storage: wait for human owned: %w", err)
		}
		return n, nil
	}
	for {
		// A wait cut by its deadline leaves the connection usable (pgx
		// only sets a read deadline); a notification that arrives during
		// the ping is kept for the next wait.
		wctx, cancel := context.WithTimeout(ctx, idle)
		n, err := l.conn.WaitForNotification(wctx)
		cancel()
		if err == nil {
			return n, nil
		}
		if ctx.Err() != nil || !errors.Is(wctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("storage: wait for human owned: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, min(idle, 5*time.Second))
		err = l.conn.Ping(pctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("storage: wait for human owned: no answer to a ping after %s without a notification: %w", idle, err)
		}
	}
}

// Close closes the listening connection.
func (l *HumanOwnedListener) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
}
