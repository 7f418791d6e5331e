package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/alexedwards/scs/pgxstore"
	"github.com/jackc/pgx/v5"
)

// Console operator roles (docs/operations.md), least to most privileged.
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAgent    = "agent"
	RoleAdmin    = "admin"
)

// ErrOperatorExists is returned by CreateOperator for an e-mail address
// that already has an operator.
var ErrOperatorExists = errors.New("storage: an operator with this e-mail exists")

// ConsoleOperator is a person who logs in to the operator console.
type ConsoleOperator struct {
	ID    int64
	Email string
	// PasswordHash is an argon2id PHC string; never shown or logged.
	PasswordHash string
	Role         string
	// ShopID empty is a platform operator (every shop).
	ShopID      string
	CreatedAt   time.Time
	LastLoginAt time.Time
	Disabled    bool
}

// Scope is the operator's shop scope: the shop id, or AllShops.
func (o *ConsoleOperator) Scope() string {
	if o.ShopID == "" {
		return AllShops
	}
	return o.ShopID
}

const operatorColumns = `id, email, password_hash, role, coalesce(shop_id, ''), created_at, last_login_at,
	disabled_at IS NOT NULL`

func scanOperator(row pgx.Row) (*ConsoleOperator, error) {
	var o ConsoleOperator
	var last *time.Time
	err := row.Scan(&o.ID, &o.Email, &o.PasswordHash, &o.Role, &o.ShopID, &o.CreatedAt, &last, &o.Disabled)
	if last != nil {
		o.LastLoginAt = *last
	}
	return &o, err
}

// CreateOperator stores o (Email lower-case, PasswordHash, Role, ShopID)
// and an audit record by actor, in one transaction, and sets o.ID.
func (db *DB) CreateOperator(ctx context.Context, o *ConsoleOperator, actor string) error {
	var shop *string
	if o.ShopID != "" {
		shop = &o.ShopID
	}
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO operators (email, password_hash, role, shop_id)
			VALUES ($1, $2, $3, $4) RETURNING id, created_at`, o.Email, o.PasswordHash, o.Role, shop).
			Scan(&o.ID, &o.CreatedAt); err != nil {
			return err
		}
		details, _ := json.Marshal(map[string]any{"email": o.Email, "role": o.Role, "shop": o.ShopID})
		return InsertAudit(ctx, tx, &AuditEntry{Actor: actor, Scope: AllShops, Shop: o.ShopID,
			Action: "operator.create", Target: "operator:" + strconv.FormatInt(o.ID, 10), Details: details})
	})
	switch {
	case isUniqueViolation(err):
		return ErrOperatorExists
	case err != nil:
		return fmt.Errorf("storage: create operator: %w", err)
	}
	return nil
}

// OperatorByEmail returns the operator with e-mail address email
// (lower-case), or ErrNotFound.
func (db *DB) OperatorByEmail(ctx context.Context, email string) (*ConsoleOperator, error) {
	return db.operator(ctx, `SELECT `+operatorColumns+` FROM operators WHERE email = $1`, email)
}

// OperatorByID returns operator id, or ErrNotFound.
func (db *DB) OperatorByID(ctx context.Context, id int64) (*ConsoleOperator, error) {
	return db.operator(ctx, `SELECT `+operatorColumns+` FROM operators WHERE id = $1`, id)
}

func (db *DB) operator(ctx context.Context, sql string, arg any) (*ConsoleOperator, error) {
	o, err := scanOperator(db.pool.QueryRow(ctx, sql, arg))
	switch {
	case noRows(err):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("storage: operator: %w", err)
	}
	return o, nil
}

// CountOperators returns how many operators exist.
func (db *DB) CountOperators(ctx context.Context) (int64, error) {
	var n int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM operators`).Scan(&n); err != nil {
		return 0, fmt.Errorf("storage: count operators: %w", err)
	}
	return n, nil
}

// RecordLogin notes operator id's login and writes e to the audit log.
func (db *DB) RecordLogin(ctx context.Context, id int64, e *AuditEntry) error {
	return db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE operators SET last_login_at = now() WHERE id = $1`, id); err != nil {
			return fmt.Errorf("storage: record login: %w", err)
		}
		return InsertAudit(ctx, tx, e)
	})
}

// SessionStore returns the console's server-side session store (the
// sessions table), which deletes expired sessions every cleanup interval
// until its StopCleanup is called.
func (db *DB) SessionStore(cleanup time.Duration) *pgxstore.PostgresStore {
	return pgxstore.NewWithCleanupInterval(db.pool, cleanup)
}

// DeleteExpiredSessions deletes the console sessions that have expired.
func (db *DB) DeleteExpiredSessions(ctx context.Context) (int64, error) {
	tag, err := db.pool.Exec(ctx, `DELETE FROM sessions WHERE expiry < now()`)
	if err != nil {
		return 0, fmt.Errorf("storage: delete expired sessions: %w", err)
	}
	return tag.RowsAffected(), nil
}
