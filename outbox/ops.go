package outbox

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// Page sizes of List.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
)

// maxQueryRunes bounds the search text of a filter.
const maxQueryRunes = 200

var shopIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// OpsConfig configures Ops. DB is required.
type OpsConfig struct {
	DB *storage.DB
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock of "retry now". Default time.Now.
	Now func() time.Time
}

// Ops are the operator operations on outbox actions: find them, look at
// their attempts, retry or cancel one, or all that match a filter. Every
// operation that changes something is written to the audit log in the same
// transaction. Errors are coded (peakdesk.Error) for the HTTP layer.
type Ops struct {
	cfg OpsConfig
	log *slog.Logger
}

// NewOps returns Ops for cfg.
func NewOps(cfg OpsConfig) (*Ops, error) {
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DB == nil {
		return nil, errors.New("outbox: ops config: DB is required")
	}
	return &Ops{cfg: cfg, log: cfg.Logger.With("component", "outbox-ops")}, nil
}

// Operator is who calls an operation: the token's subject and its shop
// claim, "*" for a platform operator, who sees every shop; a shop's own
// operator sees and touches only that shop.
type Operator struct {
	ID   string
	Shop string
}

func (op Operator) check() error {
	if op.ID == "" || (op.Shop != storage.AllShops && !shopIDRe.MatchString(op.Shop)) {
		return peakdesk.Errorf(peakdesk.EPermissionDenied, "not an operator")
	}
	return nil
}

// checkFilter validates f and keeps op within its shop.
func (op Operator) checkFilter(f *storage.ActionFilter) error {
	if f.State != "" {
		if _, err := peakdesk.ParseActionState("state", string(f.State)); err != nil {
			return err
		}
	}
	if f.Kind != "" {
		if _, err := peakdesk.ParseActionKind("kind", string(f.Kind)); err != nil {
			return err
		}
	}
	if f.Shop != "" && !shopIDRe.MatchString(f.Shop) {
		return peakdesk.FieldError("shop", "shop is not a shop id")
	}
	f.Q = strings.TrimSpace(f.Q)
	if utf8.RuneCountInString(f.Q) > maxQueryRunes || !utf8.ValidString(f.Q) {
		return peakdesk.FieldError("q", "q must be valid UTF-8 of at most %d characters", maxQueryRunes)
	}
	if op.Shop != storage.AllShops && f.Shop != "" && f.Shop != op.Shop {
		return &peakdesk.Error{Code: peakdesk.EPermissionDenied, Field: "shop",
			Message: "operators of a shop may only see that shop"}
	}
	return nil
}

// ActionPage is one page of a listing; NextCursor is empty on the last.
type ActionPage struct {
	Actions    []peakdesk.Action `json:"actions"`
	NextCursor string            `json:"next_cursor,omitempty"`
}

// List returns the actions matching f, newest first, limit at a time
// (0 = DefaultPageSize), continuing after cursor (empty = from the newest).
func (o *Ops) List(ctx context.Context, op Operator, f storage.ActionFilter, cursor string, limit int) (*ActionPage, error) {
	if err := op.check(); err != nil {
		return nil, err
	}
	if err := op.checkFilter(&f); err != nil {
		return nil, err
	}
	switch {
	case limit == 0:
		limit = DefaultPageSize
	case limit < 1 || limit > MaxPageSize:
		return nil, peakdesk.FieldError("limit", "limit must be within 1..%d", MaxPageSize)
	}
	before, err := decodeCursor(cursor)
	if err != nil {
		return nil, err
	}
	actions, err := o.cfg.DB.ListActions(ctx, op.Shop, f, before, limit+1)
	if err != nil {
		return nil, err
	}
	page := &ActionPage{Actions: actions}
	if len(actions) > limit {
		page.Actions = actions[:limit]
		page.NextCursor = encodeCursor(page.Actions[limit-1].ID)
	}
	return page, nil
}

// Cursors are opaque to clients; today they carry the last id seen.
const cursorPrefix = "a1:"

func encodeCursor(id int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + strconv.FormatInt(id, 10)))
}

func decodeCursor(c string) (int64, error) {
	if c == "" {
		return 0, nil
	}
	bad := peakdesk.FieldError("cursor", "cursor is not one this API issued")
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, bad
	}
	s, ok := strings.CutPrefix(string(raw), cursorPrefix)
	if !ok {
		return 0, bad
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 {
		return 0, bad
	}
	return id, nil
}

// ActionDetail is an action with every attempt made of it.
type ActionDetail struct {
	Action   peakdesk.Action          `json:"action"`
	Attempts []peakdesk.ActionAttempt `json:"attempts"`
}

// Get returns action id with its attempts, or not_found (also for another
// shop's action).
func (o *Ops) Get(ctx context.Context, op Operator, id int64) (*ActionDetail, error) {
	if err := op.check(); err != nil {
		return nil, err
	}
	a, err := o.cfg.DB.Action(ctx, op.Shop, id)
	if err != nil {
		return nil, err
	}
	attempts, err := o.cfg.DB.ActionAttempts(ctx, a.ShopID, id)
	if err != nil {
		return nil, err
	}
	if attempts == nil {
		attempts = []peakdesk.ActionAttempt{}
	}
	return &ActionDetail{Action: a, Attempts: attempts}, nil
}

// Retry makes action id due now. A dead or canceled action starts a new run
// with its full attempt budget; if the shop had rejected it, the retry uses
// a fresh idempotency key (the shop keeps its refusal under the old one),
// which is safe because nothing was applied under a rejected key. A running
// or succeeded action cannot be retried.
func (o *Ops) Retry(ctx context.Context, op Operator, id int64) (*peakdesk.Action, error) {
	return o.one(ctx, op, id, "outbox.retry", storage.RetryAction)
}

// Cancel gives up on action id. A running, succeeded or canceled action
// cannot be canceled (a running one may be applied at the shop right now).
func (o *Ops) Cancel(ctx context.Context, op Operator, id int64) (*peakdesk.Action, error) {
	return o.one(ctx, op, id, "outbox.cancel", storage.CancelAction)
}

type updateFunc func(ctx context.Context, tx pgx.Tx, scope string, id int64, now time.Time) (peakdesk.Action, error)

func (o *Ops) one(ctx context.Context, op Operator, id int64, name string, update updateFunc) (*peakdesk.Action, error) {
	if err := op.check(); err != nil {
		return nil, err
	}
	var a peakdesk.Action
	err := o.cfg.DB.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if a, err = update(ctx, tx, op.Shop, id, o.cfg.Now()); err != nil {
			return err
		}
		details, _ := json.Marshal(map[string]any{"kind": a.Kind, "state": a.State,
			"key_generation": a.KeyGeneration, "idempotency_key": a.IdempotencyKey})
		return storage.InsertAudit(ctx, tx, &storage.AuditEntry{Actor: op.ID, Scope: op.Shop, Shop: a.ShopID,
			Action: name, Target: "action:" + strconv.FormatInt(id, 10), Details: details})
	})
	if err != nil {
		return nil, err
	}
	o.log.InfoContext(ctx, "operator "+name, "operator", op.ID, "scope", op.Shop, "shop", a.ShopID, "action_id", id)
	return &a, nil
}

// Bulk operations.
const (
	BulkRetry  = "retry"
	BulkCancel = "cancel"
)

// BulkResult is what a bulk operation did.
type BulkResult struct {
	// ID is the operation's audit entry; its progress (Ops.BulkProgress)
	// counts the actions it changed.
	ID       int64 `json:"bulk_id"`
	Affected int64 `json:"affected"`
}

// Bulk retries or cancels every action that matches f (not a page: all of
// them, in one statement) and returns how many it changed. Actions whose
// state does not allow the operation are left alone. f must name at least
// one criterion, so that "everything" is never one click away.
func (o *Ops) Bulk(ctx context.Context, op Operator, f storage.ActionFilter, operation string) (BulkResult, error) {
	if err := op.check(); err != nil {
		return BulkResult{}, err
	}
	if err := op.checkFilter(&f); err != nil {
		return BulkResult{}, err
	}
	if f.Empty() {
		return BulkResult{}, peakdesk.FieldError("filter", "filter must name at least one of state, kind, shop, q, from, to")
	}
	var bulk func(ctx context.Context, tx pgx.Tx, scope string, f storage.ActionFilter, now time.Time, bulkOp int64) (int64, error)
	switch operation {
	case BulkRetry:
		bulk = storage.BulkRetryActions
	case BulkCancel:
		bulk = storage.BulkCancelActions
	default:
		return BulkResult{}, peakdesk.FieldError("op", "op must be retry or cancel")
	}
	shop := f.Shop
	if op.Shop != storage.AllShops {
		shop = op.Shop
	}
	var res BulkResult
	err := o.cfg.DB.Tx(ctx, func(tx pgx.Tx) error {
		// The audit entry first: its id marks what the operation changes.
		e := &storage.AuditEntry{Actor: op.ID, Scope: op.Shop, Shop: shop, Action: "outbox.bulk_" + operation,
			Target: "filter"}
		if err := storage.InsertAudit(ctx, tx, e); err != nil {
			return err
		}
		n, err := bulk(ctx, tx, op.Shop, f, o.cfg.Now(), e.ID)
		if err != nil {
			return err
		}
		res = BulkResult{ID: e.ID, Affected: n}
		details, err := json.Marshal(map[string]any{"filter": f, "affected": n})
		if err != nil {
			return err
		}
		return storage.SetAuditDetails(ctx, tx, e.ID, details)
	})
	if err != nil {
		return BulkResult{}, fmt.Errorf("outbox: bulk %s: %w", operation, err)
	}
	// The search text may hold customer data: it is in the audit log, not here.
	o.log.InfoContext(ctx, "operator outbox.bulk_"+operation, "operator", op.ID, "scope", op.Shop,
		"state", string(f.State), "kind", string(f.Kind), "shop", f.Shop, "has_q", f.Q != "", "affected", res.Affected,
		"bulk_id", res.ID)
	return res, nil
}

// BulkProgress is how the actions a bulk operation changed get on.
type BulkProgress struct {
	ID int64 `json:"bulk_id"`
	// States counts them by their state now, every state named.
	States map[peakdesk.ActionState]int64 `json:"states"`
	// Settled: none of them is pending, running or retrying.
	Settled bool `json:"settled"`
}

// BulkProgress counts by state the actions bulk operation id changed, of
// the operator's scope: how its retries get on. A later bulk operation on
// an action takes it over. A bulk operation the operator's scope does not
// see in the audit log is not found.
func (o *Ops) BulkProgress(ctx context.Context, op Operator, id int64) (BulkProgress, error) {
	if err := op.check(); err != nil {
		return BulkProgress{}, err
	}
	if id <= 0 {
		return BulkProgress{}, peakdesk.Errorf(peakdesk.ENotFound, "bulk operation not found")
	}
	counts, err := o.cfg.DB.BulkProgress(ctx, op.Shop, id)
	if err != nil {
		return BulkProgress{}, err
	}
	p := BulkProgress{ID: id, States: map[peakdesk.ActionState]int64{}, Settled: true}
	for _, s := range peakdesk.ActionStates {
		p.States[s] = counts[s]
		if !s.Final() && counts[s] > 0 {
			p.Settled = false
		}
	}
	return p, nil
}
