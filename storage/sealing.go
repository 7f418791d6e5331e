package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/secrets"
)

// Secrets at rest (docs/integration.md). The shops' secrets — shop API secrets,
// webhook secrets, LLM API keys, token-signing keys — are sealed
// (storage/secrets, AES-256-GCM under PEAKDESK_MASTER_KEY) when they are
// written and opened when they are read, here and nowhere else: callers see
// plaintext, Postgres never does. A secret written by a version before
// encryption reads as it is until SealSecrets seals it.

// secretsPolicy is how a DB treats secrets.
type secretsPolicy struct {
	box *secrets.Box
	// set: UseSecrets was called. Unset, secrets are written as they are
	// (tests and tools that never set a key); set without a box, no secret
	// can be written or read.
	set bool
}

// ErrNoMasterKey is returned when a secret is to be written or a sealed one
// read by a process that has no master key.
var ErrNoMasterKey = &peakdesk.Error{Code: peakdesk.EInvalid,
	Message: "secrets cannot be stored or read: the server has no PEAKDESK_MASTER_KEY"}

// UseSecrets makes db seal the secrets it writes with box and open the ones
// it reads. A nil box refuses to write or read any secret: a process
// without a master key. Call it before db is used.
func (db *DB) UseSecrets(box *secrets.Box) {
	db.secrets = secretsPolicy{box: box, set: true}
}

// Where a sealed secret lives: its additional data, so that a value copied
// into another row does not open.
func whereAPISecret(shop string) string     { return "shop_api_settings.secret/" + shop }
func whereWebhookSecret(shop string) string { return "shop_api_settings.webhook_secret/" + shop }
func whereLLMKey(shop string) string        { return "shop_llm_settings.api_key/" + shop }
func whereModelKey(shop string) string      { return "shop_llm_models.api_key/" + shop }
func whereShopKey(shop, kid string) string  { return "shop_keys.secret/" + shop + "/" + kid }

// seal returns what to store for the secret value.
func (db *DB) seal(value, where string) (string, error) {
	p := db.secrets
	switch {
	case value == "" || !p.set:
		return value, nil
	case p.box == nil:
		return "", ErrNoMasterKey
	}
	return p.box.Seal(value, where)
}

// open returns the secret a stored value holds.
func (db *DB) open(stored, where string) (string, error) {
	if !secrets.IsSealed(stored) {
		return stored, nil
	}
	if db.secrets.box == nil {
		return "", fmt.Errorf("storage: %w", secrets.ErrNoKey)
	}
	v, err := db.secrets.box.Open(stored, where)
	if err != nil {
		return "", fmt.Errorf("storage: %s: %w", where[:strings.IndexByte(where, '/')], err)
	}
	return v, nil
}

// sealedColumn is a column that holds secrets.
type sealedColumn struct {
	table, column string
	// key is the row's key columns; shop_id is always read too.
	key   []string
	where func(shop string, key []string) string
}

var sealedColumns = []sealedColumn{
	{"shop_api_settings", "secret", []string{"shop_id"}, func(s string, _ []string) string { return whereAPISecret(s) }},
	{"shop_api_settings", "webhook_secret", []string{"shop_id"}, func(s string, _ []string) string { return whereWebhookSecret(s) }},
	{"shop_llm_settings", "api_key", []string{"shop_id"}, func(s string, _ []string) string { return whereLLMKey(s) }},
	{"shop_llm_models", "api_key", []string{"shop_id", "position::text"}, func(s string, _ []string) string { return whereModelKey(s) }},
	{"shop_keys", "secret", []string{"kid"}, func(s string, k []string) string { return whereShopKey(s, k[0]) }},
}

// SealSecrets seals every stored secret that is not sealed with the current
// master key: plaintext written before encryption, and values sealed with an
// earlier key (a master key rotation). It returns how many it sealed. Every
// process that has a master key runs it at start; `peakdesk shop
// encrypt-secrets` runs it on demand. It may run in many processes at once:
// a value is replaced only if it is still the one that was read. A value
// that cannot be opened (sealed with a key this process lacks) is left as it
// is and reported in the error.
func (db *DB) SealSecrets(ctx context.Context) (int, error) {
	box := db.secrets.box
	if box == nil {
		return 0, ErrNoMasterKey
	}
	sealed := 0
	var errs []error
	for _, c := range sealedColumns {
		keyCols := strings.Join(c.key, ", ")
		rows, err := db.pool.Query(ctx, `SELECT shop_id, `+c.column+`, ARRAY[`+keyCols+`]
			FROM `+c.table+` WHERE `+c.column+` <> '' AND left(`+c.column+`, $1) <> $2`,
			len(box.CurrentPrefix()), box.CurrentPrefix())
		if err != nil {
			return sealed, fmt.Errorf("storage: seal secrets: %w", err)
		}
		type stale struct {
			shop, value string
			key         []string
		}
		found, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (stale, error) {
			var s stale
			err := row.Scan(&s.shop, &s.value, &s.key)
			return s, err
		})
		if err != nil {
			return sealed, fmt.Errorf("storage: seal secrets: %w", err)
		}
		for _, s := range found {
			where := c.where(s.shop, s.key)
			plain, err := db.open(s.value, where)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.%s of shop %s: %w", c.table, c.column, s.shop, err))
				continue
			}
			v, err := box.Seal(plain, where)
			if err != nil {
				return sealed, err
			}
			conds := make([]string, len(c.key))
			args := []any{v, s.value}
			for i, k := range c.key {
				args = append(args, s.key[i])
				conds[i] = fmt.Sprintf("%s = $%d", k, i+3)
			}
			tag, err := db.pool.Exec(ctx, `UPDATE `+c.table+` SET `+c.column+` = $1
				WHERE `+c.column+` = $2 AND `+strings.Join(conds, " AND "), args...)
			if err != nil {
				return sealed, fmt.Errorf("storage: seal secrets: %w", err)
			}
			sealed += int(tag.RowsAffected())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return sealed, fmt.Errorf("storage: seal secrets: %w", err)
	}
	return sealed, nil
}

// HasSecrets reports whether any shop secret is stored, sealed or not: a
// process without a master key must not start against such a database.
func (db *DB) HasSecrets(ctx context.Context) (bool, error) {
	var has bool
	err := db.pool.QueryRow(ctx, `SELECT
		EXISTS (SELECT 1 FROM shop_api_settings WHERE secret <> '' OR webhook_secret <> '')
		OR EXISTS (SELECT 1 FROM shop_llm_settings WHERE api_key <> '')
		OR EXISTS (SELECT 1 FROM shop_llm_models WHERE api_key <> '')
		OR EXISTS (SELECT 1 FROM shop_keys)`).Scan(&has)
	if err != nil {
		return false, fmt.Errorf("storage: has secrets: %w", err)
	}
	return has, nil
}

// SealedElsewhere reports whether any stored secret is sealed under a
// master key other than the one db seals with: a tool about to fall back to
// the dev-only key must not mix it into a database sealed with a real one.
func (db *DB) SealedElsewhere(ctx context.Context) (bool, error) {
	box := db.secrets.box
	if box == nil {
		return false, ErrNoMasterKey
	}
	var conds []string
	for _, c := range sealedColumns {
		conds = append(conds, `EXISTS (SELECT 1 FROM `+c.table+` WHERE left(`+c.column+`, $1) = $2
			AND left(`+c.column+`, $3) <> $4)`)
	}
	var found bool
	err := db.pool.QueryRow(ctx, `SELECT `+strings.Join(conds, " OR "), len(secrets.Prefix), secrets.Prefix,
		len(box.CurrentPrefix()), box.CurrentPrefix()).Scan(&found)
	if err != nil {
		return false, fmt.Errorf("storage: sealed elsewhere: %w", err)
	}
	return found, nil
}
