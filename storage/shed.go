package storage

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// ShedAnswer is a message the edge shed and answered from the FAQ at once,
// with the answer it gave.
type ShedAnswer struct {
	Message *peakdesk.Message
	Reply   *peakdesk.Reply
	// Trace is the W3C traceparent of the request, for the webhook action.
	Trace string
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
)

func (o ShedOutcome) String() string {
	switch o {
	case ShedStored:
		return "stored"
	case ShedRepeat:
		return "repeat"
	case ShedForeign:
		return "foreign"
	}
	return "unknown"
}

// SaveShedAnswers stores many shed answers in one transaction — each
// message already answered by its reply, the reply's webhook action when
// the shop has a webhook URL — and returns each one's outcome, in order. It
// is idempotent by message id and reply id: a message stored before is not
// stored again, and an answer stored before is reported stored, so it may
// be called more than once with the same answers (a redelivered batch).
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

	stored := map[string]string{} // message id → its reply id
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		// 1. The conversations, touched only when they are the same shop's
		//    and user's.
		b.Queue(`INSERT INTO conversations (id, shop_id, user_id)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
			ON CONFLICT (id) DO UPDATE SET updated_at = now()
			WHERE conversations.shop_id = excluded.shop_id AND conversations.user_id = excluded.user_id`,
			cIDs, cShops, cUsers)
		// 2. The replies of messages not stored yet, on conversations of
		//    their own shop and user.
		b.Queue(`INSERT INTO replies (id, shop_id, conversation_id, text, source, created_at)
			SELECT t.r, t.s, t.c, t.tx, t.src, t.ca
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
				$8::timestamptz[]) AS t(m, r, s, c, u, tx, src, ca)
			WHERE NOT EXISTS (SELECT 1 FROM messages WHERE id = t.m)
			AND EXISTS (SELECT 1 FROM conversations WHERE id = t.c AND shop_id = t.s AND user_id = t.u)
			ON CONFLICT (id) DO NOTHING`,
			ids, replyIDs, shops, convs, users, replyTexts, source, created)
		// 3. The messages, answered, wherever their reply went in.
		b.Queue(`INSERT INTO messages (id, shop_id, conversation_id, user_id, text, channel, priority,
				client_msg_id, metadata, status, reply_id, accepted_at, answered_at)
			SELECT t.m, t.s, t.c, t.u, t.tx, t.ch, t.p, t.k, t.md::jsonb, 'answered', t.r, t.at, t.ca
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
				$8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[])
				AS t(m, s, c, u, tx, ch, p, k, md, r, at, ca)
			WHERE EXISTS (SELECT 1 FROM replies WHERE id = t.r AND shop_id = t.s)
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
		// 6. What each message is answered by now.
		b.Queue(`SELECT m.id, coalesce(m.reply_id, '') FROM messages m
			JOIN unnest($1::text[], $2::text[]) AS t(m, s) ON m.id = t.m AND m.shop_id = t.s`, ids, shops)
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		steps := 5
		if len(hookKeys) == 0 {
			steps = 4
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
		var id, reply string
		_, err = pgx.ForEachRow(rows, []any{&id, &reply}, func() error {
			stored[id] = reply
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
		switch reply, ok := stored[a.Message.ID]; {
		case !ok:
			out[i] = ShedForeign
		case reply == a.Reply.ID:
			out[i] = ShedStored
		default:
			out[i] = ShedRepeat
		}
	}
	return out, nil
}
