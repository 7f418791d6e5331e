package migrations_test

import (
	"context"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// Shops from before 00010 get a webhook secret each: those with settings
// but no secret, and those without settings at all.
func TestWebhookSigningBackfillsSecrets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sqldb, p := migrated(t)
	if _, err := p.ApplyVersion(ctx, 10, false); err != nil {
		t.Fatal(err)
	}
	exec := func(q string) {
		t.Helper()
		if _, err := sqldb.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`INSERT INTO shops (id, name) VALUES ('old1', 'old1'), ('old2', 'old2'), ('bare', 'bare')`)
	exec(`INSERT INTO shop_api_settings (shop_id, webhook_url) VALUES ('old1', 'https://a.example/h'), ('old2', 'https://b.example/h')`)
	exec(`INSERT INTO shops (id, name) VALUES ('kept', 'kept')`)
	exec(`INSERT INTO shop_api_settings (shop_id, webhook_secret) VALUES ('kept', 'mine')`)
	if _, err := p.ApplyVersion(ctx, 10, true); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{}
	rows, err := sqldb.QueryContext(ctx, `SELECT s.id, a.webhook_secret FROM shops s JOIN shop_api_settings a ON a.shop_id = s.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, secret string
		if err := rows.Scan(&id, &secret); err != nil {
			t.Fatal(err)
		}
		secrets[id] = secret
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, id := range []string{"old1", "old2", "bare"} {
		if s := secrets[id]; len(s) != 64 || seen[s] {
			t.Errorf("shop %s: secret %q, want 32 random bytes in hex of its own", id, s)
		}
		seen[secrets[id]] = true
	}
	if secrets["kept"] != "mine" {
		t.Errorf("an existing secret was replaced: %q", secrets["kept"])
	}
}
