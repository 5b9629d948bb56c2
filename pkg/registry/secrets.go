package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/iotgw/iotgw/pkg/internal/sqldb"
)

// DeviceSecrets opens the registry at path read-only (no migration, so a
// running gateway is not disturbed) and returns each device's newest
// secret, opened with kek when the registry is sealed. It is for test and
// demo tools that play the devices (iotgw sim); the gateway uses Cache.
func DeviceSecrets(ctx context.Context, path string, kek *KEK) (map[string][]byte, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE name = 'device_keys'`).Scan(&n); err != nil {
		return nil, fmt.Errorf("read registry %s: %w", path, err)
	}
	if n == 0 { // written by the single-key schema and not migrated yet
		return readSecrets(ctx, db, path, `SELECT device_id, 0, secret, 0 FROM devices`, nil)
	}
	return deviceSecrets(ctx, db, path, kek)
}

// DeviceSecretsDB is DeviceSecrets on a database whose engine created the
// registry tables (see OpenDB), with d its dialect; db stays open.
func DeviceSecretsDB(ctx context.Context, db *sql.DB, d sqldb.Dialect, kek *KEK) (map[string][]byte, error) {
	if db == nil || d == nil {
		return nil, errors.New("registry: no database")
	}
	return deviceSecrets(ctx, db, d.Name(), kek)
}

func deviceSecrets(ctx context.Context, db *sql.DB, name string, kek *KEK) (map[string][]byte, error) {
	fp, err := fingerprint(ctx, db)
	if err != nil {
		return nil, err
	}
	r := &Registry{kek: kek, sealed: fp != "", name: name}
	switch {
	case kek == nil && fp != "":
		return nil, fmt.Errorf("registry %s: %w", name, ErrSealed)
	case kek != nil && fp != kek.fp:
		return nil, fmt.Errorf("registry %s: %w: it is sealed with KEK %s, not %s", name, ErrWrongKEK, short(fp), kek.Short())
	}
	return readSecrets(ctx, db, name, `SELECT device_id, key_id, secret, sealed FROM device_keys ORDER BY device_id, key_id`, r)
}

func readSecrets(ctx context.Context, db *sql.DB, path, q string, r *Registry) (map[string][]byte, error) {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("read registry %s: %w", path, err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var id string
		var keyID int64
		var stored []byte
		var sealed bool
		if err := rows.Scan(&id, &keyID, &stored, &sealed); err != nil {
			return nil, fmt.Errorf("read registry %s: %w", path, err)
		}
		if r != nil {
			if stored, err = r.openSecret(id, keyID, stored, sealed); err != nil {
				return nil, fmt.Errorf("read registry %s: %w", path, err)
			}
		}
		out[id] = stored
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read registry %s: %w", path, err)
	}
	return out, nil
}
