// Package storagetest gives tests real services: a fresh, migrated Postgres
// database per call, the Redis URL, and an embedded JetStream server.
// Postgres and Redis must be running (make test starts them); nothing here
// is a mock.
package storagetest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk/migrations"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// AdminURL is the database tests connect to in order to create their own.
func AdminURL() string {
	return cmp.Or(os.Getenv("TEST_DATABASE_URL"),
		"postgres://peakdesk:peakdesk@127.0.0.1:5432/peakdesk?sslmode=disable")
}

// DatabaseURL creates a new database with every migration applied, drops it
// when the test ends, and returns its URL. The database is a copy of a
// template migrated once per set of migrations (named after their
// fingerprint, shared by every test process), which is much cheaper than
// running every migration for every test.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := AdminURL()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("storagetest: connect %s: %v (is Postgres running? make test starts it)", redact(admin), err)
	}
	defer conn.Close(ctx)
	tmpl, err := template(ctx, conn, admin)
	if err != nil {
		t.Fatalf("storagetest: template database: %v", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "peakdesk_test_" + hex.EncodeToString(b[:])
	for attempt := 1; ; attempt++ {
		_, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+tmpl)
		var pgErr *pgconn.PgError
		// 55006: the template is being accessed by other users — a clone
		// starting at the same moment; it passes at once.
		if errors.As(err, &pgErr) && pgErr.Code == "55006" && attempt < 100 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("storagetest: create database: %v", err)
		}
		break
	}
	t.Cleanup(func() { dropDatabase(t, admin, name) })
	return withDatabase(t, admin, name)
}

// EmptyDatabaseURL creates a new database without any migration applied,
// drops it when the test ends, and returns its URL: for tests of migrating.
func EmptyDatabaseURL(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := AdminURL()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("storagetest: connect %s: %v (is Postgres running? make test starts it)", redact(admin), err)
	}
	defer conn.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "peakdesk_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("storagetest: create database: %v", err)
	}
	t.Cleanup(func() { dropDatabase(t, admin, name) })
	return withDatabase(t, admin, name)
}

func withDatabase(t testing.TB, admin, name string) string {
	t.Helper()
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("storagetest: parse %s: %v", redact(admin), err)
	}
	u.Path = "/" + name
	return u.String()
}

// template returns the name of the migrated template database of this set
// of migrations, creating it if it does not exist yet. Test processes run in
// parallel: an advisory lock lets one of them build it, under a temporary
// name renamed when complete, so no one ever clones half a schema.
func template(ctx context.Context, conn *pgx.Conn, admin string) (string, error) {
	name := "peakdesk_tmpl_" + migrations.Fingerprint()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended($1, 0))`, name); err != nil {
		return "", err
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, name)
	}()
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	building := name + "_building"
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+building+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return "", err
	}
	u, err := url.Parse(admin)
	if err != nil {
		return "", err
	}
	u.Path = "/" + building
	db, err := storage.Open(ctx, u.String(), 2)
	if err != nil {
		return "", err
	}
	err = db.Migrate(ctx)
	db.Close()
	if err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+building+" RENAME TO "+name); err != nil {
		return "", err
	}
	return name, nil
}

// dropDatabase drops a test database. DROP ... WITH (FORCE) may fail with
// insufficient_privilege (42501) while an autovacuum worker is in the
// database, which the unprivileged peakdesk role may not end; that passes
// within moments, so it is retried.
func dropDatabase(t testing.TB, admin, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Errorf("storagetest: drop database: %v", err)
		return
	}
	defer conn.Close(ctx)
	for attempt := 1; ; attempt++ {
		_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			return
		case errors.As(err, &pgErr) && pgErr.Code == "42501" && attempt < 50:
			time.Sleep(100 * time.Millisecond)
		default:
			t.Errorf("storagetest: drop database %s: %v", name, err)
			return
		}
	}
}

// DB opens a fresh migrated database, closed when the test ends.
func DB(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), DatabaseURL(t), 8)
	if err != nil {
		t.Fatalf("storagetest: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

// RedisURL is the Redis tests use. Keys of different tests do not collide:
// they are named after random ids.
func RedisURL() string {
	return cmp.Or(os.Getenv("TEST_REDIS_URL"), "redis://127.0.0.1:6379/0")
}

// NATS starts an embedded JetStream server on a free port with its store in
// a temporary directory, shut down when the test ends.
func NATS(t testing.TB) *server.Server {
	t.Helper()
	ns, err := queue.StartNATS(queue.NATSServerConfig{StoreDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatalf("storagetest: %v", err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// JetStream starts an embedded server (NATS), connects to it and creates
// peakdesk's default topology; the connection closes when the test ends.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(NATS(t).ClientURL())
	if err != nil {
		t.Fatalf("storagetest: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("storagetest: %v", err)
	}
	if _, err := queue.EnsureTopology(context.Background(), js, queue.Topology{}); err != nil {
		t.Fatalf("storagetest: %v", err)
	}
	return js
}
