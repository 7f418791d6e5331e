package retention_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/retention"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// BenchmarkRunOverAMillionMessages measures a run of the job in its steady
// state: a shop with 1,000,000 messages, one a minute, those older than 400
// days redacted by earlier runs, and 1,000 newly expired since the last run.
// The partial indexes make a run cost the expired rows, not the table. It
// logs the first run, which catches up with the 532,800 messages stored
// between 30 and 400 days ago.
//
//	go test -run '^$' -bench RunOverAMillion -benchtime 5x ./retention/
func BenchmarkRunOverAMillionMessages(b *testing.B) {
	ctx := context.Background()
	url := storagetest.DatabaseURL(b)
	db, err := storage.Open(ctx, url, 8)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if err := db.EnsureShop(ctx, "big", "big"); err != nil {
		b.Fatal(err)
	}
	// Message i was stored i minutes ago (1,000,000 minutes are about 694
	// days); the rows older than 400 days count as redacted.
	for _, q := range []string{
		`INSERT INTO conversations (id, shop_id, user_id) VALUES (md5('conv'), 'big', 'u1')`,
		`INSERT INTO messages (id, shop_id, conversation_id, user_id, text, priority, status, accepted_at, created_at, redacted_at)
		 SELECT md5(i::text), 'big', md5('conv'), 'u1', 'call me at 138' || lpad((i % 100000000)::text, 8, '0'), 'p2',
			'failed', now() - i * interval '1 minute', now() - i * interval '1 minute',
			CASE WHEN i > 576000 THEN now() END
		 FROM generate_series(1, 1000000) AS i`,
		`VACUUM ANALYZE messages`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	r, err := retention.New(retention.Config{DB: db})
	if err != nil {
		b.Fatal(err)
	}
	// The first run catches up with everything between 30 and 400 days.
	start := time.Now()
	res, err := r.RunOnce(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("catch-up run: %d messages in %v", res.Messages, time.Since(start))
	b.ResetTimer()
	for b.Loop() {
		// 1,000 rows expire between runs.
		b.StopTimer()
		if _, err := pool.Exec(ctx, `UPDATE messages SET created_at = created_at - interval '1 day'
			WHERE id IN (SELECT id FROM messages WHERE redacted_at IS NULL ORDER BY created_at LIMIT 1000)`); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := r.RunOnce(ctx)
		if err != nil || res.Messages == 0 {
			b.Fatalf("run %+v %v", res, err)
		}
	}
}
