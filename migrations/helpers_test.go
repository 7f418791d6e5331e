package migrations_test

import (
	"database/sql"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"github.com/pressly/goose/v3"

	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// migrated opens a fresh database with every migration applied, and a goose
// provider over this directory's migrations to move it about.
func migrated(t *testing.T) (*sql.DB, *goose.Provider) {
	t.Helper()
	sqldb, err := sql.Open("pgx", storagetest.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqldb.Close() })
	p, err := goose.NewProvider(goose.DialectPostgres, sqldb, os.DirFS("."))
	if err != nil {
		t.Fatal(err)
	}
	return sqldb, p
}
