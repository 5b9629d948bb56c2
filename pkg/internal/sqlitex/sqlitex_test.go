package sqlitex

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestMigrateTableTracksApart: two migration tracks in one file do not see
// each other's versions, each applies once even when two openers race,
// and a newer database is refused.
func TestMigrateTableTracksApart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := []Migration{{1, `CREATE TABLE devices (id TEXT)`}, {2, `ALTER TABLE devices ADD COLUMN x INTEGER`}}
	aud := []Migration{{1, `CREATE TABLE audit_log (seq INTEGER)`}}
	if err := Migrate(ctx, db, reg); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 { // racing openers: CREATE TABLE must run once
		wg.Add(1)
		go func() {
			defer wg.Done()
			other, err := Open(path)
			if err != nil {
				errs <- err
				return
			}
			defer other.Close()
			errs <- MigrateTable(ctx, other, "audit_migrations", aud)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM audit_migrations`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("audit_migrations rows = %d, %v; want 1", n, err)
	}
	if err := db.QueryRow(`SELECT MAX(version) FROM schema_migrations`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("schema_migrations max = %d, %v; want 2 (untouched)", n, err)
	}
	if err := MigrateTable(ctx, db, "audit_migrations", nil); err != nil {
		t.Fatalf("no steps: %v", err)
	}
	if err := MigrateTable(ctx, db, "schema_migrations", reg[:1]); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("older binary on a newer track: %v, want refused", err)
	}
	if err := MigrateTable(ctx, db, "x; DROP TABLE devices", aud); err == nil {
		t.Fatal("a table name that is not an identifier was accepted")
	}
}
