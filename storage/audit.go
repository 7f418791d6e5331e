package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditEntry is one operator action: who did what to which target, and when.
// Every operator operation (outbox retries and cancels, DLQ re-drives, …)
// writes one.
type AuditEntry struct {
	ID int64 `json:"id"`
	// Actor is the operator (the token's subject).
	Actor string `json:"actor"`
	// Scope is the operator's shop claim: a shop id, or "*" for platform
	// operators.
	Scope string `json:"scope"`
	// Shop is the shop whose data was touched; empty when the operation
	// spanned shops (a platform operator's bulk action).
	Shop string `json:"shop,omitempty"`
	// Action names the operation, e.g. "outbox.retry".
	Action string `json:"action"`
	// Target names the object, e.g. "action:42".
	Target string `json:"target,omitempty"`
	// Details is a JSON object with whatever else matters (filter, count, …).
	Details json.RawMessage `json:"details,omitempty"`
	At      time.Time       `json:"at"`
}

// InsertAudit writes e in tx, so the audit row commits with the operation
// it records. e.At is set from the database clock.
func InsertAudit(ctx context.Context, tx pgx.Tx, e *AuditEntry) error {
	details := e.Details
	if len(details) == 0 {
		details = json.RawMessage(`{}`)
	}
	err := tx.QueryRow(ctx, `INSERT INTO operator_audit (actor, scope, shop, action, target, details)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, at`,
		e.Actor, e.Scope, e.Shop, e.Action, e.Target, details).Scan(&e.ID, &e.At)
	if err != nil {
		return fmt.Errorf("storage: insert audit: %w", err)
	}
	return nil
}

// SetAuditDetails replaces the details of audit entry id in tx: for an
// operation that needs its entry's id before it knows its outcome (a bulk
// operation marks what it changes with it).
func SetAuditDetails(ctx context.Context, tx pgx.Tx, id int64, details json.RawMessage) error {
	tag, err := tx.Exec(ctx, `UPDATE operator_audit SET details = $2 WHERE id = $1`, id, details)
	if err != nil {
		return fmt.Errorf("storage: set audit details: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("storage: set audit details: no entry %d", id)
	}
	return nil
}

// Audit writes e on its own, for operations that do not change Postgres
// (e.g. a JetStream re-drive).
func (db *DB) Audit(ctx context.Context, e *AuditEntry) error {
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error { return InsertAudit(ctx, tx, e) })
}

// AuditLog returns up to limit audit entries visible in scope, newest first,
// older than the entry with id before (0 = from the newest). A shop scope
// sees the entries that touched its shop, whoever made them; "*" sees all.
func (db *DB) AuditLog(ctx context.Context, scope string, before int64, limit int) ([]AuditEntry, error) {
	rows, err := db.pool.Query(ctx, `SELECT id, actor, scope, shop, action, target, details, at
		FROM operator_audit
		WHERE ($1 = '*' OR shop = $1) AND ($2 = 0 OR id < $2)
		ORDER BY id DESC LIMIT $3`, scope, before, limit)
	if err != nil {
		return nil, fmt.Errorf("storage: audit log: %w", err)
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		err := row.Scan(&e.ID, &e.Actor, &e.Scope, &e.Shop, &e.Action, &e.Target, &e.Details, &e.At)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("storage: audit log: %w", err)
	}
	return entries, nil
}
