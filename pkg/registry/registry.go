package registry

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
)

// Errors returned by Registry.
var (
	ErrNotFound  = errors.New("device not found")
	ErrExists    = errors.New("device already exists")
	ErrBadID     = errors.New("device id must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot")
	ErrBadSecret = errors.New("secret must be 16-1024 bytes of printable UTF-8 with no surrounding whitespace")
)

// Info describes a device, without its secret.
type Info struct {
	ID        string
	Enabled   bool
	CreatedAt time.Time
}

// Registry is the device database.
type Registry struct {
	db   *sql.DB
	path string
}

// Open opens (creating if needed) the registry at path and applies pending
// migrations. The directory must exist; a new file is created 0600.
func Open(ctx context.Context, path string) (*Registry, error) {
	if path == "" {
		return nil, errors.New("registry path is empty (set --db, registry.path or IOTGW_REGISTRY_PATH)")
	}
	db, err := sqlitex.Open(path)
	if err != nil {
		return nil, err
	}
	r := &Registry{db: db, path: path}
	if err := sqlitex.Migrate(ctx, db, migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate registry %s: %w", path, err)
	}
	return r, nil
}

// Close closes the database.
func (r *Registry) Close() error { return r.db.Close() }

// Path returns the database file path.
func (r *Registry) Path() string { return r.path }

// NewSecret returns a fresh secret: 32 random bytes as 64 lowercase hex chars.
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// ValidSecret reports whether s is acceptable as a shared secret.
func ValidSecret(s string) bool {
	if len(s) < 16 || len(s) > 1024 || strings.TrimSpace(s) != s {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return false
		}
	}
	return true
}

// Add registers a new enabled device with secret.
func (r *Registry) Add(ctx context.Context, id, secret string) error {
	if !envelope.ValidDeviceID(id) {
		return ErrBadID
	}
	if !ValidSecret(secret) {
		return ErrBadSecret
	}
	_, err := r.db.ExecContext(ctx, `INSERT INTO devices(device_id, secret, enabled, created_at) VALUES(?, ?, 1, ?)`,
		id, secret, time.Now().Unix())
	var se sqlite3.Error
	if errors.As(err, &se) && se.ExtendedCode == sqlite3.ErrConstraintPrimaryKey {
		return fmt.Errorf("%s: %w", id, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	return nil
}

// List returns every device, ordered by id.
func (r *Registry) List(ctx context.Context) ([]Info, error) {
	rows, err := r.db.QueryContext(ctx, `SELECT device_id, enabled, created_at FROM devices ORDER BY device_id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Info
	for rows.Next() {
		var i Info
		var ts int64
		if err := rows.Scan(&i.ID, &i.Enabled, &ts); err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		i.CreatedAt = time.Unix(ts, 0).UTC()
		out = append(out, i)
	}
	return out, rows.Err()
}

// Get returns one device.
func (r *Registry) Get(ctx context.Context, id string) (Info, error) {
	var i Info
	var ts int64
	err := r.db.QueryRowContext(ctx, `SELECT device_id, enabled, created_at FROM devices WHERE device_id = ?`, id).Scan(&i.ID, &i.Enabled, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return i, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return i, fmt.Errorf("get device: %w", err)
	}
	i.CreatedAt = time.Unix(ts, 0).UTC()
	return i, nil
}

// SetEnabled enables or disables a device.
func (r *Registry) SetEnabled(ctx context.Context, id string, enabled bool) error {
	return r.change(ctx, id, `UPDATE devices SET enabled = ? WHERE device_id = ?`, enabled, id)
}

// Remove deletes a device.
func (r *Registry) Remove(ctx context.Context, id string) error {
	return r.change(ctx, id, `DELETE FROM devices WHERE device_id = ?`, id)
}

func (r *Registry) change(ctx context.Context, id, q string, args ...any) error {
	res, err := r.db.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("update device: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	return nil
}
