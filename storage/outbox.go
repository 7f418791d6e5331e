package storage

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox/egress"
)

// AllShops is the scope of a platform operator: every shop.
const AllShops = "*"

// OutboxChannel is the LISTEN/NOTIFY channel that wakes the relays when
// actions are written or retried.
const OutboxChannel = "peakdesk_outbox"

// ErrActionState is returned (wrapped, with the reason in its message) when
// an operator operation does not apply to the action's state, e.g.
// cancelling an action that is running or succeeded. It is an
// invalid_argument peakdesk.Error naming the field "state".
var ErrActionState = &peakdesk.Error{Code: peakdesk.EInvalid, Field: "state",
	Message: "not possible in the action's state"}

// Tx runs fn in a transaction, committed when fn returns nil.
func (db *DB) Tx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, db.pool, fn)
}

// --- shop API settings ------------------------------------------------------

// ShopAPISettings is how peakdesk reaches one shop's own systems and the
// policy it applies before promising anything. Empty strings and nil caps
// mean "use the default".
type ShopAPISettings struct {
	ShopID string
	// BaseURL of the shop API; empty = the global default.
	BaseURL string
	// Secret is sent as a bearer token to the shop API.
	Secret string
	// WebhookURL receives every reply; empty = no reply webhooks.
	WebhookURL string
	// WebhookSecret keys the reply webhooks' signatures. Every shop has
	// one: generated when the shop is created, or when settings are put
	// without one and the shop has none yet.
	WebhookSecret string
	// CouponMaxCents caps one coupon; nil = the built-in default.
	CouponMaxCents *int64
	// RefundMaxCents caps one automatic refund; nil = the built-in default.
	RefundMaxCents *int64
}

// LogValue keeps the secrets out of logs.
func (s ShopAPISettings) LogValue() slog.Value {
	return slog.GroupValue(slog.String("shop", s.ShopID), slog.String("base_url", s.BaseURL),
		slog.String("webhook_url", s.WebhookURL), slog.Bool("has_secret", s.Secret != ""),
		slog.Bool("has_webhook_secret", s.WebhookSecret != ""))
}

// ShopAPISettings returns shop's settings; a shop without a row gets the
// zero settings (every default).
func (db *DB) ShopAPISettings(ctx context.Context, shop string) (ShopAPISettings, error) {
	s := ShopAPISettings{ShopID: shop}
	err := db.pool.QueryRow(ctx, `SELECT base_url, secret, webhook_url, webhook_secret,
			coupon_max_cents, refund_max_cents
		FROM shop_api_settings WHERE shop_id = $1`, shop).Scan(
		&s.BaseURL, &s.Secret, &s.WebhookURL, &s.WebhookSecret, &s.CouponMaxCents, &s.RefundMaxCents)
	if err != nil && !noRows(err) {
		return s, fmt.Errorf("storage: shop api settings: %w", err)
	}
	return s, db.openAPISecrets(&s)
}

// openAPISecrets opens the secrets of s as read from its row.
func (db *DB) openAPISecrets(s *ShopAPISettings) error {
	var err error
	if s.Secret, err = db.open(s.Secret, whereAPISecret(s.ShopID)); err != nil {
		return err
	}
	s.WebhookSecret, err = db.open(s.WebhookSecret, whereWebhookSecret(s.ShopID))
	return err
}

// newWebhookSecret returns a fresh webhook secret for shop, sealed: 32
// random bytes in hex.
func (db *DB) newWebhookSecret(shop string) (string, error) {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return db.seal(hex.EncodeToString(b[:]), whereWebhookSecret(shop))
}

// PutShopAPISettings creates or replaces the settings of s.ShopID. An empty
// WebhookSecret keeps the shop's secret (or generates one, 32 random bytes
// in hex, when it has none): a secret can be replaced but never removed.
// URLs must be empty or absolute http(s) URLs without credentials
// (invalid_argument otherwise); whether plain http and private addresses
// may be called is decided where they are called (see
// outbox.ShopClient.PutSettings, which checks both before writing).
func (db *DB) PutShopAPISettings(ctx context.Context, s ShopAPISettings) error {
	for _, u := range []struct{ field, url string }{{"base_url", s.BaseURL}, {"webhook_url", s.WebhookURL}} {
		if u.url == "" {
			continue
		}
		if err := egress.CheckURL(u.url, true); err != nil {
			return peakdesk.FieldError(u.field, "%s: %v", u.field, err)
		}
	}
	secret, err := db.seal(s.Secret, whereAPISecret(s.ShopID))
	if err != nil {
		return err
	}
	webhookSecret, err := db.seal(s.WebhookSecret, whereWebhookSecret(s.ShopID))
	if err != nil {
		return err
	}
	// A fresh secret, used only if the shop has none.
	generated, err := db.newWebhookSecret(s.ShopID)
	if err != nil {
		return err
	}
	_, err = db.pool.Exec(ctx, `INSERT INTO shop_api_settings (shop_id, base_url, secret, webhook_url,
			webhook_secret, coupon_max_cents, refund_max_cents)
		VALUES ($1, $2, $3, $4, COALESCE(NULLIF($5, ''), $8), $6, $7)
		ON CONFLICT (shop_id) DO UPDATE SET base_url = EXCLUDED.base_url, secret = EXCLUDED.secret,
			webhook_url = EXCLUDED.webhook_url,
			webhook_secret = COALESCE(NULLIF($5, ''), NULLIF(shop_api_settings.webhook_secret, ''),
				EXCLUDED.webhook_secret),
			coupon_max_cents = EXCLUDED.coupon_max_cents, refund_max_cents = EXCLUDED.refund_max_cents,
			updated_at = now()`,
		s.ShopID, s.BaseURL, secret, s.WebhookURL, webhookSecret, s.CouponMaxCents, s.RefundMaxCents, generated)
	if err != nil {
		return fmt.Errorf("storage: put shop api settings: %w", err)
	}
	return nil
}

// --- writing actions --------------------------------------------------------

// InsertActions writes actions in tx, the transaction of the reply that
// promises them, and returns how many were new. An action whose idempotency
// key is already stored is the same action and is skipped. Each action
// needs ShopID, Kind, Payload, IdempotencyKey and MaxAttempts;
// ConversationID, ReplyID, NextAttemptAt (zero = now) and Trace (empty =
// the trace ctx carries, peakdesk.TraceFrom) are optional. Inserting wakes
// the relays once the transaction commits.
func InsertActions(ctx context.Context, tx pgx.Tx, actions []peakdesk.Action) (int, error) {
	if len(actions) == 0 {
		return 0, nil
	}
	n := len(actions)
	shops, convs, replies, kinds := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads, keys, traces := make([]string, n), make([]string, n), make([]string, n)
	maxAttempts := make([]int32, n)
	next := make([]*time.Time, n)
	grants := make([]*int64, n)
	var grantShops []string
	var grantIDs []int64
	for i := range actions {
		a := &actions[i]
		if err := checkNewAction(a); err != nil {
			return 0, err
		}
		shops[i], convs[i], replies[i], kinds[i] = a.ShopID, a.ConversationID, a.ReplyID, string(a.Kind)
		payloads[i], keys[i], maxAttempts[i] = string(a.Payload), a.IdempotencyKey, int32(a.MaxAttempts)
		traces[i] = actionTrace(ctx, a)
		if !a.NextAttemptAt.IsZero() {
			next[i] = &a.NextAttemptAt
		}
		if a.GrantID != 0 {
			grants[i] = &a.GrantID
			grantShops, grantIDs = append(grantShops, a.ShopID), append(grantIDs, a.GrantID)
		}
	}
	tag, err := tx.Exec(ctx, `INSERT INTO outbox_actions (shop_id, conversation_id, reply_id, kind, payload,
			idempotency_key, max_attempts, next_attempt_at, grant_id, trace)
		SELECT s, c, r, k, p::jsonb, ik, m, coalesce(na, now()), g, tr
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
			$8::timestamptz[], $9::bigint[], $10::text[]) AS t(s, c, r, k, p, ik, m, na, g, tr)
		ON CONFLICT (idempotency_key) DO NOTHING`,
		shops, convs, replies, kinds, payloads, keys, maxAttempts, next, grants, traces)
	if err != nil {
		return 0, fmt.Errorf("storage: insert actions: %w", err)
	}
	// A money action's grant is confirmed with it, or the reply does not
	// commit.
	if err := confirmGrants(ctx, tx, grantShops, grantIDs); err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}

// actionTrace is the trace an action is written with: its own, or the one
// of the request or message ctx belongs to.
func actionTrace(ctx context.Context, a *peakdesk.Action) string {
	return cmp.Or(a.Trace, peakdesk.TraceFrom(ctx).Parent)
}

func checkNewAction(a *peakdesk.Action) error {
	switch {
	case a.ShopID == "":
		return errors.New("storage: insert actions: ShopID is required")
	case a.IdempotencyKey == "":
		return errors.New("storage: insert actions: IdempotencyKey is required")
	case a.MaxAttempts < 1:
		return errors.New("storage: insert actions: MaxAttempts must be at least 1")
	case !json.Valid(a.Payload):
		return errors.New("storage: insert actions: Payload must be JSON")
	}
	if _, err := peakdesk.ParseActionKind("kind", string(a.Kind)); err != nil {
		return fmt.Errorf("storage: insert actions: unknown kind %q", a.Kind)
	}
	return nil
}

// InsertReplyWebhook writes a webhook.deliver action in tx if the action's
// shop has a webhook URL configured, and reports whether it did (a shop
// without one gets no webhooks; a repeat of the key is not inserted twice).
// Like InsertActions, it takes ctx's trace when a has none.
func InsertReplyWebhook(ctx context.Context, tx pgx.Tx, a peakdesk.Action) (bool, error) {
	if a.Kind != peakdesk.ActionWebhookDeliver {
		return false, fmt.Errorf("storage: insert reply webhook: kind is %q", a.Kind)
	}
	if err := checkNewAction(&a); err != nil {
		return false, err
	}
	tag, err := tx.Exec(ctx, `INSERT INTO outbox_actions (shop_id, conversation_id, reply_id, kind, payload,
			idempotency_key, max_attempts, trace)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8
		WHERE EXISTS (SELECT 1 FROM shop_api_settings WHERE shop_id = $1 AND webhook_url <> '')
		ON CONFLICT (idempotency_key) DO NOTHING`,
		a.ShopID, a.ConversationID, a.ReplyID, string(a.Kind), []byte(a.Payload), a.IdempotencyKey, a.MaxAttempts,
		actionTrace(ctx, &a))
	if err != nil {
		return false, fmt.Errorf("storage: insert reply webhook: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// EnqueueActions writes actions in a transaction of their own (follow-ups
// and tests; a reply's actions go through InsertActions in its transaction).
func (db *DB) EnqueueActions(ctx context.Context, actions []peakdesk.Action) (int, error) {
	var n int
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		n, err = InsertActions(ctx, tx, actions)
		return err
	})
	return n, err
}

// LiveActionExists reports whether shop has an action of kind that is not
// dead or canceled and concerns order orderID or conversation conv (an
// empty value matches nothing). The tools' policy checks use it to promise
// one refund per order and one coupon per conversation and order.
func (db *DB) LiveActionExists(ctx context.Context, shop string, kind peakdesk.ActionKind, conv, orderID string) (bool, error) {
	var ok bool
	err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM outbox_actions
		WHERE shop_id = $1 AND kind = $2 AND state NOT IN ('dead', 'canceled')
		AND (($3 <> '' AND conversation_id = $3) OR ($4 <> '' AND payload ->> 'order_id' = $4)))`,
		shop, string(kind), conv, orderID).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("storage: live action exists: %w", err)
	}
	return ok, nil
}

// --- relay --------------------------------------------------------------------

const actionColumns = `id, shop_id, conversation_id, reply_id, kind, payload, idempotency_key, key_generation,
	state, attempts, run_attempts, max_attempts, next_attempt_at, lease_owner, lease_expires_at, last_error,
	last_http_status, rejected, result, created_at, updated_at, completed_at, coalesce(grant_id, 0), trace`

func scanAction(row pgx.Row) (peakdesk.Action, error) {
	var a peakdesk.Action
	var kind, state string
	var leaseOwner *string
	var leaseExpires, completed *time.Time
	var status *int
	var payload, result []byte
	err := row.Scan(&a.ID, &a.ShopID, &a.ConversationID, &a.ReplyID, &kind, &payload, &a.IdempotencyKey,
		&a.KeyGeneration, &state, &a.Attempts, &a.RunAttempts, &a.MaxAttempts, &a.NextAttemptAt, &leaseOwner,
		&leaseExpires, &a.LastError, &status, &a.Rejected, &result, &a.CreatedAt, &a.UpdatedAt, &completed,
		&a.GrantID, &a.Trace)
	if err != nil {
		return a, err
	}
	a.Kind, a.State = peakdesk.ActionKind(kind), peakdesk.ActionState(state)
	a.Payload = payload
	if len(result) > 0 {
		a.Result = result
	}
	if leaseOwner != nil {
		a.LeaseOwner = *leaseOwner
	}
	if leaseExpires != nil {
		a.LeaseExpiresAt = *leaseExpires
	}
	if status != nil {
		a.LastHTTPStatus = *status
	}
	if completed != nil {
		a.CompletedAt = *completed
	}
	return a, nil
}

func collectActions(rows pgx.Rows) ([]peakdesk.Action, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (peakdesk.Action, error) { return scanAction(row) })
}

// ClaimActions leases up to limit actions to relay owner until now+lease:
// due pending and retrying ones, and running ones whose lease expired (their
// relay vanished). Rows locked by another relay are skipped, so concurrent
// relays never claim the same action. Each claim counts an attempt and opens
// its attempt row; an expired attempt left open is closed as abandoned.
func (db *DB) ClaimActions(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]peakdesk.Action, error) {
	if limit < 1 {
		return nil, nil
	}
	rows, err := db.pool.Query(ctx, `WITH due AS (
			SELECT id FROM outbox_actions
			WHERE state IN ('pending', 'retrying') AND next_attempt_at <= $1
			ORDER BY next_attempt_at LIMIT $2
			FOR UPDATE SKIP LOCKED
		), expired AS (
			SELECT id FROM outbox_actions
			WHERE state = 'running' AND lease_expires_at <= $1
			ORDER BY lease_expires_at LIMIT $2
			FOR UPDATE SKIP LOCKED
		), picked AS (
			SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT $2
		), claimed AS (
			UPDATE outbox_actions a
			SET state = 'running', attempts = a.attempts + 1, run_attempts = a.run_attempts + 1,
				lease_owner = $3, lease_expires_at = $4, updated_at = $1
			FROM picked WHERE a.id = picked.id
			RETURNING a.*
		), closed AS (
			UPDATE outbox_attempts t
			SET ended_at = $1, outcome = 'abandoned',
				error = 'the relay running this attempt vanished; its lease expired and the action was re-claimed'
			FROM claimed c WHERE t.action_id = c.id AND t.ended_at IS NULL
		), opened AS (
			INSERT INTO outbox_attempts (action_id, n, relay, idempotency_key, started_at)
			SELECT id, attempts, $3,
				CASE WHEN key_generation = 0 THEN idempotency_key ELSE idempotency_key || '-g' || key_generation END,
				$1
			FROM claimed
		)
		SELECT `+actionColumns+` FROM claimed ORDER BY next_attempt_at, id`,
		now, limit, owner, now.Add(lease))
	if err != nil {
		return nil, fmt.Errorf("storage: claim actions: %w", err)
	}
	actions, err := collectActions(rows)
	if err != nil {
		return nil, fmt.Errorf("storage: claim actions: %w", err)
	}
	return actions, nil
}

// AttemptResult is how one attempt of a claimed action ended and what
// becomes of the action.
type AttemptResult struct {
	ActionID int64
	// N is the attempt's number (the action's Attempts when claimed).
	N int
	// Owner is the relay that claimed the action.
	Owner string
	// State is the action's next state: retrying, succeeded or dead.
	State peakdesk.ActionState
	// NextAttemptAt is when a retrying action is due again.
	NextAttemptAt time.Time
	// Outcome is one of the peakdesk.Attempt* outcomes.
	Outcome    string
	HTTPStatus int
	// Error is the attempt's error; LastError the action's (it may add why
	// the action is dead).
	Error     string
	LastError string
	Excerpt   string
	// Result is the shop's JSON answer to a successful attempt.
	Result json.RawMessage
	// Rejected marks a final refusal by the shop.
	Rejected bool
	// Uncount gives the attempt back to the run's budget (an attempt cut
	// short by a stopping relay).
	Uncount bool
	EndedAt time.Time
}

const finishAttemptSQL = `WITH act AS (
		UPDATE outbox_actions
		SET state = $4, next_attempt_at = coalesce($5, next_attempt_at), lease_owner = NULL,
			lease_expires_at = NULL, last_error = $6, last_http_status = $7, rejected = $8,
			result = coalesce($9::jsonb, result), run_attempts = run_attempts - $10, updated_at = $11::timestamptz,
			completed_at = CASE WHEN $4::text IN ('succeeded', 'dead') THEN $11::timestamptz END
		WHERE id = $1 AND state = 'running' AND lease_owner = $2 AND attempts = $3
		RETURNING 1
	), att AS (
		UPDATE outbox_attempts
		SET ended_at = $11::timestamptz, outcome = $12, http_status = $7, response_excerpt = $13,
			error = CASE WHEN EXISTS (SELECT 1 FROM act) THEN $14
				ELSE ltrim($14 || '; lease lost: the action was re-claimed before this result was recorded', '; ') END
		WHERE action_id = $1 AND n = $3
	)
	SELECT EXISTS (SELECT 1 FROM act)`

func (r *AttemptResult) args() []any {
	var status *int
	if r.HTTPStatus != 0 {
		status = &r.HTTPStatus
	}
	var result any
	if len(r.Result) > 0 {
		result = []byte(r.Result)
	}
	var next *time.Time
	if r.State == peakdesk.ActionRetrying {
		next = &r.NextAttemptAt
	}
	uncount := 0
	if r.Uncount {
		uncount = 1
	}
	return []any{r.ActionID, r.Owner, r.N, string(r.State), next, r.LastError, status, r.Rejected, result, uncount,
		r.EndedAt, r.Outcome, r.Excerpt, r.Error}
}

// FinishAttempt records r: it closes the attempt row and, if owner still
// holds the action's lease, moves the action to its next state. It reports
// whether the action was updated; false means the lease was lost (expired
// and re-claimed) and the attempt row says so.
func (db *DB) FinishAttempt(ctx context.Context, r AttemptResult) (bool, error) {
	var applied bool
	if err := db.pool.QueryRow(ctx, finishAttemptSQL, r.args()...).Scan(&applied); err != nil {
		return false, fmt.Errorf("storage: finish attempt: %w", err)
	}
	return applied, nil
}

// ActionListener receives the outbox notifications on a connection of its
// own. It is not safe for concurrent use.
type ActionListener struct {
	conn *pgx.Conn
}

// ListenActions opens a dedicated connection that listens on OutboxChannel.
func (db *DB) ListenActions(ctx context.Context) (*ActionListener, error) {
	conn, err := db.listen(ctx, OutboxChannel)
	if err != nil {
		return nil, fmt.Errorf("storage: listen actions: %w", err)
	}
	return &ActionListener{conn: conn}, nil
}

// listen opens a connection of its own (not the pool's: it waits for
// notifications as long as it lives) that listens on channel.
func (db *DB) listen(ctx context.Context, channel string) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, db.pool.Config().ConnConfig)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return conn, nil
}

// Wait returns when a notification arrives, or with an error when ctx ends
// or the connection fails (then Close it and listen again).
func (l *ActionListener) Wait(ctx context.Context) error {
	if _, err := l.conn.WaitForNotification(ctx); err != nil {
		return fmt.Errorf("storage: wait for actions: %w", err)
	}
	return nil
}

// Close closes the listening connection.
func (l *ActionListener) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
}

// ActionCount is the number of actions in one state and kind.
type ActionCount struct {
	State peakdesk.ActionState
	Kind  peakdesk.ActionKind
	Count int64
}

// SucceededCountEvery is the default maxAge of the succeeded counts of
// ActionCounts and ShopActionCounts.
const SucceededCountEvery = 5 * time.Minute

// liveStates are the action states counted exactly on every call: what is
// in flight, and what operators have to look at. Succeeded actions are
// never deleted and grow with the shops' history (a webhook delivery per
// answer): counting them reads most of a shop's rows, so they are counted
// again only every so often (succeededCount).
const liveStates = `('pending', 'running', 'retrying', 'dead', 'canceled')`

// succeededCounts holds the last count of succeeded actions of each scope
// (AllShops or one shop) a caller asked for.
type succeededCounts struct {
	mu sync.Mutex
	m  map[string]*succeededCount
}

func (s *succeededCounts) of(scope string) *succeededCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.m[scope]
	if c == nil {
		if s.m == nil {
			s.m = map[string]*succeededCount{}
		}
		c = &succeededCount{}
		s.m[scope] = c
	}
	return c
}

// succeededCount is the last count of one scope's succeeded actions by
// kind.
type succeededCount struct {
	counting sync.Mutex // held by the caller counting them again
	mu       sync.Mutex // guards at and counts
	at       time.Time
	counts   []ActionCount
}

func (c *succeededCount) last() ([]ActionCount, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts, c.at
}

// ActionCounts counts the actions of all shops by state and kind, for
// metrics. Every state but succeeded is counted on each call, a range of
// the (state, kind, id) index over those actions only. Succeeded actions
// are counted again only when the last count is maxAge old, by one caller
// of the process while the others get the last count, and a failed
// recount keeps the last one (the next call tries again). The two counts
// are not one snapshot: around a recount an action that just succeeded may
// be in neither or both.
func (db *DB) ActionCounts(ctx context.Context, maxAge time.Duration) ([]ActionCount, error) {
	return db.actionCounts(ctx, AllShops, maxAge)
}

// ShopActionCounts counts shop's actions by state, for its operators'
// overview, like ActionCounts: succeeded ones as last counted, at most
// maxAge ago (per shop and process), the others exactly.
func (db *DB) ShopActionCounts(ctx context.Context, shop string, maxAge time.Duration) (map[peakdesk.ActionState]int64, error) {
	if shop == "" || shop == AllShops {
		return nil, fmt.Errorf("storage: shop action counts: a shop is required")
	}
	counts, err := db.actionCounts(ctx, shop, maxAge)
	if err != nil {
		return nil, err
	}
	out := map[peakdesk.ActionState]int64{}
	for _, c := range counts {
		out[c.State] += c.Count
	}
	return out, nil
}

func (db *DB) actionCounts(ctx context.Context, scope string, maxAge time.Duration) ([]ActionCount, error) {
	counts, err := db.countActions(ctx, scope, liveStates)
	if err != nil {
		return nil, fmt.Errorf("storage: action counts: %w", err)
	}
	succeeded, err := db.succeededCounts(ctx, scope, maxAge)
	if err != nil {
		return nil, err
	}
	return append(counts, succeeded...), nil
}

// countActions counts scope's actions in states (an SQL list) by state and
// kind. Two statements, so that each has its plan: the (state, kind, id)
// index for all shops, the (shop_id, state, kind, id) one for a shop.
func (db *DB) countActions(ctx context.Context, scope, states string) ([]ActionCount, error) {
	var rows pgx.Rows
	var err error
	if scope == AllShops {
		rows, err = db.pool.Query(ctx, `SELECT state, kind, count(*) FROM outbox_actions
			WHERE state IN `+states+` GROUP BY state, kind`)
	} else {
		rows, err = db.pool.Query(ctx, `SELECT state, kind, count(*) FROM outbox_actions
			WHERE shop_id = $1 AND state IN `+states+` GROUP BY state, kind`, scope)
	}
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanActionCount)
}

// succeededCounts returns the succeeded actions of scope (AllShops or a
// shop) by kind as last counted, counting them again when that count is
// maxAge old (see ActionCounts).
func (db *DB) succeededCounts(ctx context.Context, scope string, maxAge time.Duration) ([]ActionCount, error) {
	c := db.succeeded.of(scope)
	last, at := c.last()
	switch {
	case !at.IsZero() && time.Since(at) < maxAge:
		return last, nil
	case at.IsZero():
		c.counting.Lock() // nothing to give meanwhile: wait for the first count
	case !c.counting.TryLock():
		return last, nil // another caller is counting
	}
	defer c.counting.Unlock()
	if last, at = c.last(); !at.IsZero() && time.Since(at) < maxAge {
		return last, nil // counted while this caller waited
	}
	counts, err := db.countActions(ctx, scope, `('succeeded')`)
	switch {
	case err != nil && at.IsZero():
		return nil, fmt.Errorf("storage: succeeded action counts: %w", err)
	case err != nil:
		// The cheap counts stand; the next call counts these again.
		slog.Warn("counting succeeded outbox actions failed; keeping the last count", "scope", scope, "err", err)
		return last, nil
	}
	c.mu.Lock()
	c.at, c.counts = time.Now(), counts
	c.mu.Unlock()
	return counts, nil
}

func scanActionCount(row pgx.CollectableRow) (ActionCount, error) {
	var c ActionCount
	var state, kind string
	err := row.Scan(&state, &kind, &c.Count)
	c.State, c.Kind = peakdesk.ActionState(state), peakdesk.ActionKind(kind)
	return c, err
}

// OldestDue returns the due time of the longest-waiting action that is due
// at now (pending or retrying), and false when none is.
func (db *DB) OldestDue(ctx context.Context, now time.Time) (time.Time, bool, error) {
	var oldest *time.Time
	err := db.pool.QueryRow(ctx, `SELECT min(next_attempt_at) FROM outbox_actions
		WHERE state IN ('pending', 'retrying') AND next_attempt_at <= $1`, now).Scan(&oldest)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("storage: oldest due: %w", err)
	}
	if oldest == nil {
		return time.Time{}, false, nil
	}
	return *oldest, true, nil
}

// --- operators ----------------------------------------------------------------

// ActionFilter selects actions for operators. Empty fields match everything.
type ActionFilter struct {
	State peakdesk.ActionState `json:"state,omitempty"`
	Kind  peakdesk.ActionKind  `json:"kind,omitempty"`
	Shop  string               `json:"shop,omitempty"`
	// Q matches text anywhere in the payload or the last error
	// (case-insensitive), or an idempotency key or conversation id exactly.
	Q string `json:"q,omitempty"`
	// From and To bound the creation time: From ≤ created_at < To (zero =
	// unbounded).
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
}

// Empty reports whether f matches every action.
func (f ActionFilter) Empty() bool {
	return f.State == "" && f.Kind == "" && f.Shop == "" && f.Q == "" && f.From.IsZero() && f.To.IsZero()
}

// where returns the SQL condition of f within scope, appending its
// arguments to args.
func (f ActionFilter) where(scope string, args *[]any) string {
	arg := func(v any) string {
		*args = append(*args, v)
		return "$" + strconv.Itoa(len(*args))
	}
	conds := []string{"true"}
	if scope != AllShops {
		conds = append(conds, "shop_id = "+arg(scope))
	}
	if f.Shop != "" {
		conds = append(conds, "shop_id = "+arg(f.Shop))
	}
	if f.State != "" {
		conds = append(conds, "state = "+arg(string(f.State)))
	}
	if f.Kind != "" {
		conds = append(conds, "kind = "+arg(string(f.Kind)))
	}
	if f.Q != "" {
		like := arg("%" + escapeLike(f.Q) + "%")
		exact := arg(f.Q)
		conds = append(conds, "(payload::text ILIKE "+like+" OR last_error ILIKE "+like+
			" OR idempotency_key = "+exact+" OR conversation_id = "+exact+")")
	}
	if !f.From.IsZero() {
		conds = append(conds, "created_at >= "+arg(f.From))
	}
	if !f.To.IsZero() {
		conds = append(conds, "created_at < "+arg(f.To))
	}
	return strings.Join(conds, " AND ")
}

func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// ListActions returns up to limit actions of scope (a shop id or AllShops)
// that match f, newest first, with ids below before (0 = from the newest).
func (db *DB) ListActions(ctx context.Context, scope string, f ActionFilter, before int64, limit int) ([]peakdesk.Action, error) {
	var args []any
	where := f.where(scope, &args)
	if before > 0 {
		args = append(args, before)
		where += " AND id < $" + strconv.Itoa(len(args))
	}
	args = append(args, limit)
	rows, err := db.pool.Query(ctx, `SELECT `+actionColumns+` FROM outbox_actions WHERE `+where+
		` ORDER BY id DESC LIMIT $`+strconv.Itoa(len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("storage: list actions: %w", err)
	}
	actions, err := collectActions(rows)
	if err != nil {
		return nil, fmt.Errorf("storage: list actions: %w", err)
	}
	return actions, nil
}

// Action returns action id if it is in scope, or ErrNotFound.
func (db *DB) Action(ctx context.Context, scope string, id int64) (peakdesk.Action, error) {
	a, err := scanAction(db.pool.QueryRow(ctx, `SELECT `+actionColumns+` FROM outbox_actions
		WHERE id = $1 AND ($2 = '*' OR shop_id = $2)`, id, scope))
	switch {
	case noRows(err):
		return a, notFound("action")
	case err != nil:
		return a, fmt.Errorf("storage: action: %w", err)
	}
	return a, nil
}

// ActionAttempts returns the attempts of action id of shop, in order.
func (db *DB) ActionAttempts(ctx context.Context, shop string, id int64) ([]peakdesk.ActionAttempt, error) {
	rows, err := db.pool.Query(ctx, `SELECT t.action_id, t.n, t.relay, t.idempotency_key, t.started_at,
			t.ended_at, t.outcome, t.http_status, t.error, t.response_excerpt
		FROM outbox_attempts t JOIN outbox_actions a ON a.id = t.action_id
		WHERE t.action_id = $1 AND a.shop_id = $2 ORDER BY t.n`, id, shop)
	if err != nil {
		return nil, fmt.Errorf("storage: action attempts: %w", err)
	}
	attempts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (peakdesk.ActionAttempt, error) {
		var t peakdesk.ActionAttempt
		var ended *time.Time
		var status *int
		err := row.Scan(&t.ActionID, &t.N, &t.Relay, &t.Key, &t.StartedAt, &ended, &t.Outcome, &status,
			&t.Error, &t.ResponseExcerpt)
		if ended != nil {
			t.EndedAt = *ended
		}
		if status != nil {
			t.HTTPStatus = *status
		}
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: action attempts: %w", err)
	}
	return attempts, nil
}

// The operator updates. Retry makes an action due now: a dead or canceled
// one starts a new run (run_attempts = 0) and, if the shop had rejected it,
// a new key generation, since the shop keeps its refusal under the old key.
// Cancel gives up on an action that has not run to success; a running action
// can be neither (its attempt is in flight at the shop).
const (
	retryableStates   = `('pending', 'retrying', 'dead', 'canceled')`
	cancelableStates  = `('pending', 'retrying', 'dead')`
	retrySetStatement = `state = CASE WHEN state = 'retrying' THEN 'retrying' ELSE 'pending' END,
		next_attempt_at = $1, updated_at = $1, completed_at = NULL,
		run_attempts = CASE WHEN state IN ('dead', 'canceled') THEN 0 ELSE run_attempts END,
		key_generation = key_generation + CASE WHEN rejected THEN 1 ELSE 0 END,
		rejected = false`
	cancelSetStatement = `state = 'canceled', updated_at = $1, completed_at = $1`
)

// RetryAction makes action id of scope due at now, in tx, and returns it. It
// returns ErrNotFound, or ErrActionState when the action is running or
// succeeded. It wakes the relays when tx commits.
func RetryAction(ctx context.Context, tx pgx.Tx, scope string, id int64, now time.Time) (peakdesk.Action, error) {
	return updateAction(ctx, tx, scope, id, now, retrySetStatement, retryableStates, true)
}

// CancelAction cancels action id of scope in tx and returns it. It returns
// ErrNotFound, or ErrActionState when the action is running, succeeded or
// canceled already.
func CancelAction(ctx context.Context, tx pgx.Tx, scope string, id int64, now time.Time) (peakdesk.Action, error) {
	return updateAction(ctx, tx, scope, id, now, cancelSetStatement, cancelableStates, false)
}

func updateAction(ctx context.Context, tx pgx.Tx, scope string, id int64, now time.Time, set, states string, notify bool) (peakdesk.Action, error) {
	a, err := scanAction(tx.QueryRow(ctx, `UPDATE outbox_actions SET `+set+`
		WHERE id = $2 AND ($3 = '*' OR shop_id = $3) AND state IN `+states+`
		RETURNING `+actionColumns, now, id, scope))
	if noRows(err) {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM outbox_actions WHERE id = $1 AND ($2 = '*' OR shop_id = $2)`,
			id, scope).Scan(&state)
		switch {
		case noRows(err):
			return a, notFound("action")
		case err != nil:
			return a, fmt.Errorf("storage: update action: %w", err)
		}
		return a, actionStateError("the action is " + state)
	}
	if isUniqueViolation(err) {
		// Retrying a dead money action brings its grant back, which the
		// order's other live grant refuses.
		return a, actionStateError("another refund or coupon of the same order is live")
	}
	if err != nil {
		return a, fmt.Errorf("storage: update action: %w", err)
	}
	if notify {
		if err := notifyRelays(ctx, tx); err != nil {
			return a, err
		}
	}
	return a, nil
}

// BulkRetryActions retries, in one statement in tx, every action of scope
// matching f that can be retried, marks them as bulk operation bulkOp's
// (the operation's audit entry; BulkProgress) and returns how many it
// retried. A dead or canceled coupon or refund whose order has another
// live one by now is left as it is.
func BulkRetryActions(ctx context.Context, tx pgx.Tx, scope string, f ActionFilter, now time.Time, bulkOp int64) (int64, error) {
	n, err := bulkUpdate(ctx, tx, scope, f, now, bulkOp, retrySetStatement, retryableStates+` AND NOT EXISTS (
		SELECT 1 FROM money_grants mine JOIN money_grants live ON live.shop_id = mine.shop_id
			AND live.kind = mine.kind AND live.order_id = mine.order_id AND live.order_id <> ''
			AND live.released_at IS NULL AND live.id <> mine.id
		WHERE mine.id = outbox_actions.grant_id AND mine.released_at IS NOT NULL)`)
	if err == nil && n > 0 {
		err = notifyRelays(ctx, tx)
	}
	return n, err
}

// BulkCancelActions cancels, in one statement in tx, every action of scope
// matching f that can be canceled, marks them as bulk operation bulkOp's
// and returns how many it canceled.
func BulkCancelActions(ctx context.Context, tx pgx.Tx, scope string, f ActionFilter, now time.Time, bulkOp int64) (int64, error) {
	return bulkUpdate(ctx, tx, scope, f, now, bulkOp, cancelSetStatement, cancelableStates)
}

func bulkUpdate(ctx context.Context, tx pgx.Tx, scope string, f ActionFilter, now time.Time, bulkOp int64, set, states string) (int64, error) {
	if bulkOp <= 0 {
		return 0, errors.New("storage: bulk update actions: the bulk operation's audit entry is required")
	}
	args := []any{now, bulkOp}
	where := f.where(scope, &args)
	tag, err := tx.Exec(ctx, `UPDATE outbox_actions SET `+set+`, bulk_op = $2 WHERE `+where+` AND state IN `+states, args...)
	if isUniqueViolation(err) {
		return 0, actionStateError("two of the matching coupons or refunds are for the same order; retry them one by one")
	}
	if err != nil {
		return 0, fmt.Errorf("storage: bulk update actions: %w", err)
	}
	return tag.RowsAffected(), nil
}

// BulkProgress counts by state the actions of scope that bulk operation
// bulkOp (its audit entry's id) changed and no later one took over. It
// returns ErrNotFound unless bulkOp is an outbox bulk operation whose audit
// entry scope sees (a shop sees those that touched it).
func (db *DB) BulkProgress(ctx context.Context, scope string, bulkOp int64) (map[peakdesk.ActionState]int64, error) {
	var known bool
	if err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM operator_audit WHERE id = $1
			AND action IN ('outbox.bulk_retry', 'outbox.bulk_cancel') AND ($2 = '*' OR shop = $2))`,
		bulkOp, scope).Scan(&known); err != nil {
		return nil, fmt.Errorf("storage: bulk progress: %w", err)
	}
	if !known {
		return nil, notFound("bulk operation")
	}
	rows, err := db.pool.Query(ctx, `SELECT state, count(*) FROM outbox_actions
		WHERE bulk_op = $1 AND ($2 = '*' OR shop_id = $2) GROUP BY state`, bulkOp, scope)
	if err != nil {
		return nil, fmt.Errorf("storage: bulk progress: %w", err)
	}
	counts := map[peakdesk.ActionState]int64{}
	var state string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error {
		counts[peakdesk.ActionState(state)] = n
		return nil
	}); err != nil {
		return nil, fmt.Errorf("storage: bulk progress: %w", err)
	}
	return counts, nil
}

// deferRelayNotify, queued in a transaction, keeps the outbox trigger from
// notifying the relays at its commit (migration 00020): NOTIFY holds one
// lock for the whole database from commit until the commit's WAL flush is
// done, so a notification in every turn made the turns commit one at a
// time. The worker calls NotifyRelays instead, a few times a second at most.
const deferRelayNotify = `SELECT set_config('peakdesk.defer_outbox_notify', 'on', true)`

// NotifyRelays wakes the relays (LISTEN/NOTIFY on OutboxChannel) to look for
// due actions now; they also poll, so a lost notification only delays them.
func (db *DB) NotifyRelays(ctx context.Context) error {
	if _, err := db.pool.Exec(ctx, `SELECT pg_notify($1, '')`, OutboxChannel); err != nil {
		return fmt.Errorf("storage: notify relays: %w", err)
	}
	return nil
}

func notifyRelays(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, OutboxChannel); err != nil {
		return fmt.Errorf("storage: notify relays: %w", err)
	}
	return nil
}
