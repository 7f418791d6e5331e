package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ShopKey is one of a shop's token-signing keys (HS256): tokens name it by
// KID in their JWT header. The key without NotAfter is the shop's current
// key; a rotated key is valid until its NotAfter.
type ShopKey struct {
	KID    string
	ShopID string
	// Secret is the HMAC key (its bytes as they are). Never log it.
	Secret    string
	CreatedAt time.Time
	NotAfter  *time.Time
}

// LogValue keeps the secret out of logs.
func (k ShopKey) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("kid", k.KID), slog.String("shop", k.ShopID), slog.Time("created_at", k.CreatedAt)}
	if k.NotAfter != nil {
		attrs = append(attrs, slog.Time("not_after", *k.NotAfter))
	}
	return slog.GroupValue(attrs...)
}

// ValidAt reports whether tokens signed with k are accepted at t.
func (k *ShopKey) ValidAt(t time.Time) bool {
	return k.NotAfter == nil || t.Before(*k.NotAfter)
}

const shopKeyColumns = `kid, shop_id, secret, created_at, not_after`

// scanShopKey reads a key row, its secret opened (keys are sealed at rest).
func (db *DB) scanShopKey(row pgx.Row) (*ShopKey, error) {
	var k ShopKey
	err := row.Scan(&k.KID, &k.ShopID, &k.Secret, &k.CreatedAt, &k.NotAfter)
	if noRows(err) {
		return nil, notFound("signing key")
	}
	if err != nil {
		return nil, err
	}
	if k.Secret, err = db.open(k.Secret, whereShopKey(k.ShopID, k.KID)); err != nil {
		return nil, err
	}
	return &k, nil
}

// ShopKeyByID returns the signing key kid, whichever shop it belongs to (the
// token verifier learns the shop from the key), or ErrNotFound.
func (db *DB) ShopKeyByID(ctx context.Context, kid string) (*ShopKey, error) {
	k, err := db.scanShopKey(db.pool.QueryRow(ctx, `SELECT `+shopKeyColumns+` FROM shop_keys WHERE kid = $1`, kid))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("storage: shop key: %w", err)
	}
	return k, err
}

// EnsureShopKey returns shop's current signing key. A shop without one gets
// kid and secret as its first key. ErrNotFound if the shop does not exist.
func (db *DB) EnsureShopKey(ctx context.Context, shop, kid, secret string) (*ShopKey, error) {
	sealed, err := db.seal(secret, whereShopKey(shop, kid))
	if err != nil {
		return nil, err
	}
	_, err = db.pool.Exec(ctx, `INSERT INTO shop_keys (kid, shop_id, secret) VALUES ($1, $2, $3)
		ON CONFLICT (shop_id) WHERE not_after IS NULL DO NOTHING`, kid, shop, sealed)
	if isForeignKeyViolation(err) {
		return nil, notFound("shop")
	}
	if err != nil {
		return nil, fmt.Errorf("storage: ensure shop key: %w", err)
	}
	k, err := db.scanShopKey(db.pool.QueryRow(ctx, `SELECT `+shopKeyColumns+` FROM shop_keys
		WHERE shop_id = $1 AND not_after IS NULL`, shop))
	if err != nil {
		// Rotated away between the two statements: rare, and a retry
		// finds the new current key.
		return nil, fmt.Errorf("storage: ensure shop key: %w", err)
	}
	return k, nil
}

// RotateShopKey makes kid and secret shop's current signing key and lets
// every older key of the shop expire at most overlap from now (an earlier
// not_after stays; overlap 0 revokes them at once). It returns the new key,
// or ErrNotFound if the shop does not exist.
func (db *DB) RotateShopKey(ctx context.Context, shop, kid, secret string, overlap time.Duration) (*ShopKey, error) {
	sealed, err := db.seal(secret, whereShopKey(shop, kid))
	if err != nil {
		return nil, err
	}
	var k *ShopKey
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		// The shop's row lock orders concurrent rotations.
		var one int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM shops WHERE id = $1 FOR UPDATE`, shop).Scan(&one); err != nil {
			if noRows(err) {
				return notFound("shop")
			}
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE shop_keys
			SET not_after = LEAST(COALESCE(not_after, 'infinity'), now() + $2 * interval '1 millisecond')
			WHERE shop_id = $1`, shop, overlap.Milliseconds()); err != nil {
			return err
		}
		var err error
		k, err = db.scanShopKey(tx.QueryRow(ctx, `INSERT INTO shop_keys (kid, shop_id, secret) VALUES ($1, $2, $3)
			RETURNING `+shopKeyColumns, kid, shop, sealed))
		return err
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("storage: rotate shop key: %w", err)
	}
	return k, nil
}

// ExpireShopKey sets the not_after of shop's key kid to at (operators
// revoking one key; tests). ErrNotFound if the shop has no such key.
func (db *DB) ExpireShopKey(ctx context.Context, shop, kid string, at time.Time) error {
	tag, err := db.pool.Exec(ctx, `UPDATE shop_keys SET not_after = $3 WHERE shop_id = $1 AND kid = $2`, shop, kid, at)
	switch {
	case err != nil:
		return fmt.Errorf("storage: expire shop key: %w", err)
	case tag.RowsAffected() == 0:
		return notFound("signing key")
	}
	return nil
}

func isForeignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503"
}
