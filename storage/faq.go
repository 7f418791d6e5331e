package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
)

// FAQEntry is one question and answer of a shop's FAQ.
type FAQEntry struct {
	ID        int64
	ShopID    string
	Question  string
	Answer    string
	Tags      []string
	UpdatedAt time.Time
}

// FAQImport reports what ImportFAQ changed.
type FAQImport struct {
	// Inserted counts new questions, Updated questions whose answer or tags
	// changed, Unchanged the rest of the file, Deleted entries removed because
	// replace was asked for and the file no longer has them.
	Inserted, Updated, Unchanged, Deleted int
}

// ImportFAQ stores entries in shop's FAQ in one transaction: a question
// already present (same text after trimming) gets the new answer and tags.
// With replace, entries whose question is not in entries are deleted. The
// shop must exist.
func (db *DB) ImportFAQ(ctx context.Context, shop string, entries []FAQEntry, replace bool) (FAQImport, error) {
	return db.ImportFAQAudited(ctx, shop, entries, replace, nil)
}

// ImportFAQAudited is ImportFAQ that also writes audit (when not nil) in
// the import's transaction, its details set to the import's counts.
func (db *DB) ImportFAQAudited(ctx context.Context, shop string, entries []FAQEntry, replace bool, audit *AuditEntry) (FAQImport, error) {
	var res FAQImport
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if err := db.importFAQ(ctx, tx, shop, entries, replace, &res); err != nil {
			return err
		}
		if audit == nil {
			return nil
		}
		audit.Details, _ = json.Marshal(map[string]any{"entries": len(entries), "replace": replace,
			"inserted": res.Inserted, "updated": res.Updated, "unchanged": res.Unchanged, "deleted": res.Deleted})
		return InsertAudit(ctx, tx, audit)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return FAQImport{}, err
		}
		return FAQImport{}, fmt.Errorf("storage: import faq: %w", err)
	}
	return res, nil
}

// importFAQ is ImportFAQ's work in tx; res counts what it changed.
func (db *DB) importFAQ(ctx context.Context, tx pgx.Tx, shop string, entries []FAQEntry, replace bool, res *FAQImport) error {
	var ok bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shops WHERE id = $1)`, shop).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("storage: import faq: shop %q: %w", shop, notFound("shop"))
	}
	questions := make([]string, 0, len(entries))
	for _, e := range entries {
		q, a := strings.TrimSpace(e.Question), strings.TrimSpace(e.Answer)
		tags := e.Tags
		if tags == nil {
			tags = []string{}
		}
		// xmax = 0 tells an inserted row from an updated one; the WHERE
		// skips rows that would not change, so their version stays.
		var inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO faq_entries (shop_id, question, answer, tags)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (shop_id, question) DO UPDATE
				SET answer = EXCLUDED.answer, tags = EXCLUDED.tags, updated_at = now()
				WHERE faq_entries.answer IS DISTINCT FROM EXCLUDED.answer
				   OR faq_entries.tags IS DISTINCT FROM EXCLUDED.tags
			RETURNING xmax = 0`, shop, q, a, tags).Scan(&inserted)
		switch {
		case noRows(err):
			res.Unchanged++
		case err != nil:
			return err
		case inserted:
			res.Inserted++
		default:
			res.Updated++
		}
		questions = append(questions, q)
	}
	if replace {
		tag, err := tx.Exec(ctx, `DELETE FROM faq_entries WHERE shop_id = $1 AND NOT (question = ANY ($2))`,
			shop, questions)
		if err != nil {
			return err
		}
		res.Deleted = int(tag.RowsAffected())
	}
	return nil
}

// DeleteFAQ removes entry id from shop's FAQ; ErrNotFound if it has no such entry.
func (db *DB) DeleteFAQ(ctx context.Context, shop string, id int64) error {
	tag, err := db.pool.Exec(ctx, `DELETE FROM faq_entries WHERE shop_id = $1 AND id = $2`, shop, id)
	if err != nil {
		return fmt.Errorf("storage: delete faq: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return notFound("FAQ entry")
	}
	return nil
}

// FAQEntries returns shop's FAQ, oldest entry first, and the FAQ version the
// entries belong to (0 when the shop never had an entry).
func (db *DB) FAQEntries(ctx context.Context, shop string) ([]FAQEntry, int64, error) {
	var (
		entries []FAQEntry
		version int64
	)
	// Read the version and the rows in one snapshot, so a concurrent change
	// is either fully in both or in neither.
	err := pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			err := tx.QueryRow(ctx, `SELECT version FROM faq_versions WHERE shop_id = $1`, shop).Scan(&version)
			if err != nil && !noRows(err) {
				return err
			}
			rows, err := tx.Query(ctx, `SELECT id, shop_id, question, answer, tags, updated_at
				FROM faq_entries WHERE shop_id = $1 ORDER BY id`, shop)
			if err != nil {
				return err
			}
			entries, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (FAQEntry, error) {
				var e FAQEntry
				err := row.Scan(&e.ID, &e.ShopID, &e.Question, &e.Answer, &e.Tags, &e.UpdatedAt)
				return e, err
			})
			return err
		})
	if err != nil {
		return nil, 0, fmt.Errorf("storage: faq entries: %w", err)
	}
	return entries, version, nil
}

// FAQVersions returns the FAQ version of every shop that ever had an entry.
// It is cheap enough to poll every few seconds.
func (db *DB) FAQVersions(ctx context.Context) (map[string]int64, error) {
	rows, err := db.pool.Query(ctx, `SELECT shop_id, version FROM faq_versions`)
	if err != nil {
		return nil, fmt.Errorf("storage: faq versions: %w", err)
	}
	defer rows.Close()
	versions := map[string]int64{}
	for rows.Next() {
		var shop string
		var v int64
		if err := rows.Scan(&shop, &v); err != nil {
			return nil, fmt.Errorf("storage: faq versions: %w", err)
		}
		versions[shop] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: faq versions: %w", err)
	}
	return versions, nil
}

// FAQEntry returns entry id of shop's FAQ, or ErrNotFound.
func (db *DB) FAQEntry(ctx context.Context, shop string, id int64) (*FAQEntry, error) {
	var e FAQEntry
	err := db.pool.QueryRow(ctx, `SELECT id, shop_id, question, answer, tags, updated_at
		FROM faq_entries WHERE shop_id = $1 AND id = $2`, shop, id).
		Scan(&e.ID, &e.ShopID, &e.Question, &e.Answer, &e.Tags, &e.UpdatedAt)
	switch {
	case noRows(err):
		return nil, notFound("FAQ entry")
	case err != nil:
		return nil, fmt.Errorf("storage: faq entry: %w", err)
	}
	return &e, nil
}

// UpdateFAQEntry replaces the question, answer and tags of entry e.ID of
// e.ShopID's FAQ and writes audit in the same transaction. ErrNotFound if
// the shop has no such entry; invalid_argument if another entry has the
// question.
func (db *DB) UpdateFAQEntry(ctx context.Context, e *FAQEntry, audit *AuditEntry) error {
	tags := e.Tags
	if tags == nil {
		tags = []string{}
	}
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE faq_entries SET question = $3, answer = $4, tags = $5, updated_at = now()
			WHERE shop_id = $1 AND id = $2 RETURNING updated_at`,
			e.ShopID, e.ID, strings.TrimSpace(e.Question), strings.TrimSpace(e.Answer), tags).Scan(&e.UpdatedAt)
		if noRows(err) {
			return notFound("FAQ entry")
		}
		if err != nil {
			return err
		}
		return InsertAudit(ctx, tx, audit)
	})
	switch {
	case isUniqueViolation(err):
		return peakdesk.FieldError("question", "another entry of the FAQ has this question")
	case errors.Is(err, ErrNotFound):
		return err
	case err != nil:
		return fmt.Errorf("storage: update faq entry: %w", err)
	}
	return nil
}

// DeleteFAQEntry removes entry id of shop's FAQ and writes audit in the
// same transaction; ErrNotFound if the shop has no such entry.
func (db *DB) DeleteFAQEntry(ctx context.Context, shop string, id int64, audit *AuditEntry) error {
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM faq_entries WHERE shop_id = $1 AND id = $2`, shop, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return notFound("FAQ entry")
		}
		return InsertAudit(ctx, tx, audit)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("storage: delete faq entry: %w", err)
	}
	return err
}
