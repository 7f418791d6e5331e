package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/peakdesk/peakdesk"
)

// Queries of the operator console (docs/operations.md). Every one is scoped by
// the operator's shop (a shop id, or AllShops) and answered from an index,
// so the pages stay fast at a million rows.

// CountActions counts the actions of scope that match f and are in one of
// states (none = any state). The console states the count before a bulk
// operation acts on the same filter.
func (db *DB) CountActions(ctx context.Context, scope string, f ActionFilter, states []peakdesk.ActionState) (int64, error) {
	var args []any
	where := f.where(scope, &args)
	if len(states) > 0 {
		ss := make([]string, len(states))
		for i, s := range states {
			ss[i] = string(s)
		}
		args = append(args, ss)
		where += " AND state = ANY($" + strconv.Itoa(len(args)) + ")"
	}
	var n int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM outbox_actions WHERE `+where, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("storage: count actions: %w", err)
	}
	return n, nil
}

// --- dead letters ---------------------------------------------------------------

// DLQEntry returns dead letter id if it is in scope, or ErrNotFound.
func (db *DB) DLQEntry(ctx context.Context, scope string, id int64) (*DLQEntry, error) {
	e, err := scanDLQ(db.pool.QueryRow(ctx, `SELECT `+dlqColumns+` FROM dlq_entries d
		WHERE d.id = $1 AND ($2 = '*' OR d.shop_id = $2)`, id, scope))
	switch {
	case noRows(err):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("storage: dlq entry: %w", err)
	}
	return e, nil
}

// CountDLQ counts the dead letters f selects (its Before and Limit aside).
func (db *DB) CountDLQ(ctx context.Context, f DLQFilter) (int64, error) {
	shop := f.Shop
	if f.Scope != AllShops {
		shop = f.Scope
	}
	var n int64
	err := db.pool.QueryRow(ctx, `SELECT count(*) FROM dlq_entries
		WHERE ($1 = '' OR shop_id = $1) AND ($2 = '' OR state = $2)`, shop, f.State).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("storage: count dlq: %w", err)
	}
	return n, nil
}

// BulkResolveDLQ resolves up to limit dead letters of f.Scope (narrowed to
// f.Shop) that are still dead: re-driven (their messages back in line, as
// RedriveDLQ does) or discarded, with one audit record, in one transaction.
// It returns the entries it resolved; the caller re-publishes re-driven
// ones. Call it again until it returns none to resolve them all.
func (db *DB) BulkResolveDLQ(ctx context.Context, f DLQFilter, to, actor string, limit int) ([]DLQEntry, error) {
	if to != DLQRedriven && to != DLQDiscarded {
		return nil, fmt.Errorf("storage: bulk resolve dlq: unknown state %q", to)
	}
	shop := f.Shop
	if f.Scope != AllShops {
		shop = f.Scope
	}
	var entries []DLQEntry
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `WITH picked AS (
				SELECT id FROM dlq_entries WHERE state = 'dead' AND ($1 = '' OR shop_id = $1)
				ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
			), done AS (
				UPDATE dlq_entries d SET state = $3, resolved_at = now(), resolved_by = $4
				FROM picked WHERE d.id = picked.id RETURNING d.*
			)
			SELECT `+dlqColumns+` FROM done d ORDER BY d.id`, shop, limit, to, actor)
		if err != nil {
			return err
		}
		if entries, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (DLQEntry, error) {
			e, err := scanDLQ(row)
			return *e, err
		}); err != nil || len(entries) == 0 {
			return err
		}
		ids, shops, msgs := make([]int64, len(entries)), make([]string, len(entries)), make([]string, len(entries))
		for i, e := range entries {
			ids[i], shops[i], msgs[i] = e.ID, e.ShopID, e.MessageID
		}
		if to == DLQRedriven {
			if _, err := tx.Exec(ctx, `UPDATE messages m SET status = 'waiting', attempts = 0, last_error = NULL
				FROM unnest($1::text[], $2::text[]) AS t(shop, id)
				WHERE m.id = t.id AND m.shop_id = t.shop AND m.status = 'failed' AND m.reply_id IS NULL`,
				shops, msgs); err != nil {
				return err
			}
		}
		details, _ := json.Marshal(map[string]any{"shop": f.Shop, "entries": ids, "affected": len(ids)})
		return InsertAudit(ctx, tx, &AuditEntry{Actor: actor, Scope: f.Scope, Shop: shop,
			Action: "dlq.bulk_" + map[string]string{DLQRedriven: "redrive", DLQDiscarded: "discard"}[to],
			Target: "filter", Details: details})
	})
	if err != nil {
		return nil, fmt.Errorf("storage: bulk resolve dlq: %w", err)
	}
	return entries, nil
}

// --- conversations ----------------------------------------------------------------

// ConversationSummary is a conversation found by a console search.
type ConversationSummary struct {
	ID        string
	ShopID    string
	UserID    string
	Handoff   bool
	CreatedAt time.Time
	UpdatedAt time.Time
	// State is who answers (human takeover); Agent who owns it or last
	// resolved it.
	State peakdesk.ConversationState
	Agent string
}

// FindConversations returns up to limit conversations of scope that q
// names: by conversation id, customer (user) id, message id, or order
// number (the order_id of an outbox action), most recently active first.
func (db *DB) FindConversations(ctx context.Context, scope, q string, limit int) ([]ConversationSummary, error) {
	rows, err := db.pool.Query(ctx, `WITH found AS (
			SELECT id FROM conversations WHERE id = $1
			UNION SELECT id FROM conversations WHERE user_id = $1
			UNION SELECT conversation_id FROM messages WHERE id = $1
			UNION SELECT conversation_id FROM outbox_actions
				WHERE (payload ->> 'order_id') = $1 AND conversation_id <> ''
		)
		SELECT c.id, c.shop_id, c.user_id, c.handoff, c.created_at, c.updated_at, c.state, c.agent
		FROM conversations c JOIN found f ON f.id = c.id
		WHERE ($2 = '*' OR c.shop_id = $2)
		ORDER BY c.updated_at DESC, c.id LIMIT $3`, q, scope, limit)
	if err != nil {
		return nil, fmt.Errorf("storage: find conversations: %w", err)
	}
	found, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ConversationSummary, error) {
		var c ConversationSummary
		err := row.Scan(&c.ID, &c.ShopID, &c.UserID, &c.Handoff, &c.CreatedAt, &c.UpdatedAt, &c.State, &c.Agent)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: find conversations: %w", err)
	}
	return found, nil
}

// TimelineMessage is a customer message as operators see it.
type TimelineMessage struct {
	ID         string
	Priority   string
	Status     string
	Text       string
	ReplyID    string
	Attempts   int
	LastError  string
	AcceptedAt time.Time
}

// TimelineAction is an outbox action of a conversation with the money
// grant its tool call took, if any.
type TimelineAction struct {
	peakdesk.Action
	// GrantKind, GrantOrder and GrantCents describe the grant (zero without).
	GrantKind  string
	GrantOrder string
	GrantCents int64
	GrantAt    time.Time
}

// Timeline is everything that happened on one conversation.
type Timeline struct {
	Conversation ConversationSummary
	Messages     []TimelineMessage
	Replies      []peakdesk.Reply
	Actions      []TimelineAction
	// Truncated is set when the conversation has more than the limit of
	// messages or replies and only the latest are shown.
	Truncated bool
}

// ConversationTimeline returns conversation id of scope with its latest
// limit messages and replies and all its actions, or ErrNotFound.
func (db *DB) ConversationTimeline(ctx context.Context, scope, id string, limit int) (*Timeline, error) {
	t := &Timeline{}
	c := &t.Conversation
	err := db.pool.QueryRow(ctx, `SELECT id, shop_id, user_id, handoff, created_at, updated_at, state, agent
		FROM conversations WHERE id = $1 AND ($2 = '*' OR shop_id = $2)`, id, scope).Scan(
		&c.ID, &c.ShopID, &c.UserID, &c.Handoff, &c.CreatedAt, &c.UpdatedAt, &c.State, &c.Agent)
	switch {
	case noRows(err):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("storage: timeline: %w", err)
	}
	shop := c.ShopID
	rows, err := db.pool.Query(ctx, `SELECT * FROM (
			SELECT id, priority, status, text, coalesce(reply_id, ''), attempts, coalesce(last_error, ''), accepted_at
			FROM messages WHERE conversation_id = $1 AND shop_id = $2
			ORDER BY accepted_at DESC, id DESC LIMIT $3) m ORDER BY accepted_at, id`, id, shop, limit+1)
	if err != nil {
		return nil, fmt.Errorf("storage: timeline messages: %w", err)
	}
	if t.Messages, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (TimelineMessage, error) {
		var m TimelineMessage
		err := row.Scan(&m.ID, &m.Priority, &m.Status, &m.Text, &m.ReplyID, &m.Attempts, &m.LastError, &m.AcceptedAt)
		return m, err
	}); err != nil {
		return nil, fmt.Errorf("storage: timeline messages: %w", err)
	}
	if len(t.Messages) > limit {
		t.Messages, t.Truncated = t.Messages[1:], true
	}
	rows, err = db.pool.Query(ctx, `SELECT * FROM (
			SELECT id, text, source, model, prompt_tokens, completion_tokens, cost_micro_usd, agent, created_at
			FROM replies WHERE conversation_id = $1 AND shop_id = $2
			ORDER BY created_at DESC, id DESC LIMIT $3) r ORDER BY created_at, id`, id, shop, limit+1)
	if err != nil {
		return nil, fmt.Errorf("storage: timeline replies: %w", err)
	}
	if t.Replies, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (peakdesk.Reply, error) {
		r := peakdesk.Reply{ShopID: shop, ConversationID: id}
		err := row.Scan(&r.ID, &r.Text, &r.Source, &r.Model, &r.PromptTokens, &r.CompletionTokens,
			&r.CostMicroUSD, &r.Agent, &r.CreatedAt)
		return r, err
	}); err != nil {
		return nil, fmt.Errorf("storage: timeline replies: %w", err)
	}
	if len(t.Replies) > limit {
		t.Replies, t.Truncated = t.Replies[1:], true
	}
	rows, err = db.pool.Query(ctx, `SELECT `+actionColumns+` FROM outbox_actions
		WHERE conversation_id = $1 AND shop_id = $2 ORDER BY id LIMIT $3`, id, shop, limit)
	if err != nil {
		return nil, fmt.Errorf("storage: timeline actions: %w", err)
	}
	actions, err := collectActions(rows)
	if err != nil {
		return nil, fmt.Errorf("storage: timeline actions: %w", err)
	}
	var grantIDs []int64
	for _, a := range actions {
		t.Actions = append(t.Actions, TimelineAction{Action: a})
		if a.GrantID != 0 {
			grantIDs = append(grantIDs, a.GrantID)
		}
	}
	if len(grantIDs) == 0 {
		return t, nil
	}
	rows, err = db.pool.Query(ctx, `SELECT id, kind, order_id, amount_cents, created_at FROM money_grants
		WHERE id = ANY($1) AND shop_id = $2`, grantIDs, shop)
	if err != nil {
		return nil, fmt.Errorf("storage: timeline grants: %w", err)
	}
	var gid, cents int64
	var kind, order string
	var at time.Time
	if _, err := pgx.ForEachRow(rows, []any{&gid, &kind, &order, &cents, &at}, func() error {
		for i := range t.Actions {
			if a := &t.Actions[i]; a.GrantID == gid {
				a.GrantKind, a.GrantOrder, a.GrantCents, a.GrantAt = kind, order, cents, at
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("storage: timeline grants: %w", err)
	}
	return t, nil
}

// --- samples ------------------------------------------------------------------------

// SampleRow is one sample of the console's charts.
type SampleRow struct {
	At                         time.Time
	BacklogP0, BacklogP1       float64
	BacklogP2                  float64
	InFlight, Concurrency      float64
	AnswersPerS                float64
	P99P0, P99P1, P99P2        float64
	LLM429PerS, FallbacksPerS  float64
	OutboxDue, OutboxDead, DLQ float64
	// Data is the whole sample (JSON); empty in SampleSeries.
	Data json.RawMessage
}

// InsertSample stores r unless a sample of the same instant exists (another
// console process took it).
func (db *DB) InsertSample(ctx context.Context, r SampleRow) error {
	_, err := db.pool.Exec(ctx, `INSERT INTO console_samples (at, backlog_p0, backlog_p1, backlog_p2, inflight,
			concurrency, answers_per_s, p99_p0, p99_p1, p99_p2, llm_429_per_s, fallbacks_per_s, outbox_due,
			outbox_dead, dlq, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
		ON CONFLICT (at) DO NOTHING`,
		r.At, r.BacklogP0, r.BacklogP1, r.BacklogP2, r.InFlight, r.Concurrency, r.AnswersPerS, r.P99P0, r.P99P1,
		r.P99P2, r.LLM429PerS, r.FallbacksPerS, r.OutboxDue, r.OutboxDead, r.DLQ, []byte(r.Data))
	if err != nil {
		return fmt.Errorf("storage: insert sample: %w", err)
	}
	return nil
}

// LatestSample returns the newest sample's data and time, or ErrNotFound.
func (db *DB) LatestSample(ctx context.Context) (json.RawMessage, time.Time, error) {
	var data []byte
	var at time.Time
	err := db.pool.QueryRow(ctx, `SELECT data, at FROM console_samples ORDER BY at DESC LIMIT 1`).Scan(&data, &at)
	switch {
	case noRows(err):
		return nil, at, ErrNotFound
	case err != nil:
		return nil, at, fmt.Errorf("storage: latest sample: %w", err)
	}
	return data, at, nil
}

// SampleSeries returns the samples since since, averaged over buckets of
// bucket (0 = every sample), oldest first.
func (db *DB) SampleSeries(ctx context.Context, since time.Time, bucket time.Duration) ([]SampleRow, error) {
	step := "0"
	if bucket > 0 {
		step = strconv.FormatInt(bucket.Milliseconds(), 10)
	}
	rows, err := db.pool.Query(ctx, `SELECT CASE WHEN $2::bigint = 0 THEN at
				ELSE date_bin(make_interval(secs => $2::bigint / 1000.0), at, 'epoch') END AS t,
			avg(backlog_p0), avg(backlog_p1), avg(backlog_p2), avg(inflight), avg(concurrency), avg(answers_per_s),
			max(p99_p0), max(p99_p1), max(p99_p2), avg(llm_429_per_s), avg(fallbacks_per_s), avg(outbox_due),
			avg(outbox_dead), avg(dlq)
		FROM console_samples WHERE at >= $1 GROUP BY t ORDER BY t`, since, step)
	if err != nil {
		return nil, fmt.Errorf("storage: sample series: %w", err)
	}
	series, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (SampleRow, error) {
		var r SampleRow
		err := row.Scan(&r.At, &r.BacklogP0, &r.BacklogP1, &r.BacklogP2, &r.InFlight, &r.Concurrency, &r.AnswersPerS,
			&r.P99P0, &r.P99P1, &r.P99P2, &r.LLM429PerS, &r.FallbacksPerS, &r.OutboxDue, &r.OutboxDead, &r.DLQ)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: sample series: %w", err)
	}
	return series, nil
}

// PruneSamples deletes the samples older than before.
func (db *DB) PruneSamples(ctx context.Context, before time.Time) (int64, error) {
	tag, err := db.pool.Exec(ctx, `DELETE FROM console_samples WHERE at < $1`, before)
	if err != nil {
		return 0, fmt.Errorf("storage: prune samples: %w", err)
	}
	return tag.RowsAffected(), nil
}

// SpendSince returns the LLM spend of each shop since since, in micro-USD.
func (db *DB) SpendSince(ctx context.Context, since time.Time) (map[string]int64, error) {
	rows, err := db.pool.Query(ctx, `SELECT shop_id, sum(cost_micro_usd)::bigint FROM replies
		WHERE created_at >= $1 AND cost_micro_usd > 0 GROUP BY shop_id`, since)
	if err != nil {
		return nil, fmt.Errorf("storage: spend since: %w", err)
	}
	spend := map[string]int64{}
	var shop string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&shop, &n}, func() error {
		spend[shop] = n
		return nil
	}); err != nil {
		return nil, fmt.Errorf("storage: spend since: %w", err)
	}
	return spend, nil
}

// DeadLetterCount counts the dead letters still dead, in every shop.
func (db *DB) DeadLetterCount(ctx context.Context) (int64, error) {
	var n int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM dlq_entries WHERE state = 'dead'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("storage: dead letter count: %w", err)
	}
	return n, nil
}

// OpenTraced is Open with a pgx query tracer: the console's plan test
// records the queries its pages run to EXPLAIN them.
func OpenTraced(ctx context.Context, url string, maxConns int32, tracer pgx.QueryTracer) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("storage: parse database url: %w", err)
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("storage: open postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("storage: ping postgres: %w", err)
	}
	return &DB{pool: pool}, nil
}
