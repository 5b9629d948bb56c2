package registry

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/internal/sqldb"
	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
)

// Errors returned by Registry.
var (
	ErrNotFound  = errors.New("device not found")
	ErrExists    = errors.New("device already exists")
	ErrBadID     = errors.New("device id must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot")
	ErrBadSecret = errors.New("secret must be 16-1024 bytes of printable UTF-8 with no surrounding whitespace")
)

// Info describes a device, without its secrets.
type Info struct {
	ID        string
	Enabled   bool
	CreatedAt time.Time
	// RevokedAt is when Revoke was called; zero if never.
	RevokedAt time.Time
	// Freshness is how the device proves a message is new:
	// FreshnessTimestamp or FreshnessCounter.
	Freshness string
}

// The freshness modes (docs/PROTOCOL.md, sections 1 and 2a).
const (
	// FreshnessTimestamp: a message carries a timestamp within
	// validation.max_clock_skew, and its id is remembered that long.
	FreshnessTimestamp = "timestamp"
	// FreshnessCounter: a message carries a counter above the highest the
	// device had accepted.
	FreshnessCounter = "counter"
)

// ErrBadFreshness is returned for a freshness mode that is neither
// "timestamp" nor "counter".
var ErrBadFreshness = errors.New(`freshness must be "timestamp" or "counter"`)

// CheckFreshness returns mode, "" standing for FreshnessTimestamp, or
// ErrBadFreshness.
func CheckFreshness(mode string) (string, error) {
	switch mode {
	case "", FreshnessTimestamp:
		return FreshnessTimestamp, nil
	case FreshnessCounter:
		return FreshnessCounter, nil
	}
	return "", fmt.Errorf("%q: %w", mode, ErrBadFreshness)
}

// Revoked reports whether the device was revoked.
func (i Info) Revoked() bool { return !i.RevokedAt.IsZero() }

// Registry is the device database, on any engine (see OpenDB).
type Registry struct {
	db    *sql.DB
	d     sqldb.Dialect
	owned bool   // Close closes db
	path  string // the SQLite file, or ""
	name  string // path, or the engine's name, for messages
	// kek and prev are the current KEK and the previous one, also
	// accepted (security.previous_kek_file); nil: none. Guarded by kmu:
	// SetKEKs swaps them while the gateway runs.
	kmu    sync.RWMutex
	kek    *KEK
	prev   *KEK
	sealed bool // registry_meta holds a KEK fingerprint
	now    func() time.Time
}

// Option configures Open.
type Option func(*Registry)

// WithKEK seals new secrets and opens sealed ones with k (nil: none).
func WithKEK(k *KEK) Option { return func(r *Registry) { r.kek = k } }

// WithPreviousKEK also accepts a registry sealed under k, the KEK before
// the current one (nil: none), and opens its secrets: a gateway given both
// keeps working while the registry is re-sealed from k to the current KEK
// (iotgw kek rotate), whichever it holds at each refresh. New secrets are
// sealed under whichever of the two the registry is sealed with.
func WithPreviousKEK(k *KEK) Option { return func(r *Registry) { r.prev = k } }

// SetKEKs replaces the KEK and the previous KEK (nil: none) of a registry
// in use, for a gateway that reloads its KEK files (SIGHUP). Secrets are
// opened and sealed with the new pair from then on; a Cache picks them up
// at its next reload (Cache.Reload forces one).
func (r *Registry) SetKEKs(cur, prev *KEK) {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	r.kek, r.prev = cur, prev
}

// keks returns the current and previous KEK.
func (r *Registry) keks() (cur, prev *KEK) {
	r.kmu.RLock()
	defer r.kmu.RUnlock()
	return r.kek, r.prev
}

// WithClock sets the clock used for key creation and expiry (default time.Now).
func WithClock(now func() time.Time) Option { return func(r *Registry) { r.now = now } }

// Open opens (creating if needed) the registry at path and applies pending
// migrations. The directory must exist; a new file is created 0600.
//
// With WithKEK, a registry sealed under another KEK fails with ErrWrongKEK,
// and one holding secrets in the clear fails with ErrUnsealed (seal them
// with Reseal: iotgw kek rotate --new FILE). An empty registry opened with
// a KEK records its fingerprint, so it is sealed from then on. Without a
// KEK a sealed registry still opens (list, show, disable, revoke work),
// but anything that needs a secret fails with ErrSealed.
func Open(ctx context.Context, path string, opts ...Option) (*Registry, error) {
	if path == "" {
		return nil, errors.New("registry path is empty (set --db, registry.path or IOTGW_REGISTRY_PATH)")
	}
	db, err := sqlitex.Open(path)
	if err != nil {
		return nil, err
	}
	if err := sqlitex.Migrate(ctx, db, migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate registry %s: %w", path, err)
	}
	r, err := openDB(ctx, db, sqlitex.Dialect, path, path, opts)
	if err != nil {
		db.Close()
		return nil, err
	}
	r.owned = true
	return r, nil
}

// OpenDB is Open on a database whose engine already created the registry
// tables (devices, device_keys, registry_meta, with the column names and
// meanings of migrations), such as PostgreSQL's (package pgstore), with d
// its dialect. Secrets are sealed exactly as in Open, so a registry copied
// row for row between engines opens with the same KEK and no other. Close
// leaves db open: its owner closes it.
func OpenDB(ctx context.Context, db *sql.DB, d sqldb.Dialect, opts ...Option) (*Registry, error) {
	if db == nil || d == nil {
		return nil, errors.New("registry: no database")
	}
	return openDB(ctx, db, d, "", d.Name(), opts)
}

func openDB(ctx context.Context, db *sql.DB, d sqldb.Dialect, path, name string, opts []Option) (*Registry, error) {
	r := &Registry{db: db, d: d, path: path, name: name, now: time.Now}
	for _, o := range opts {
		o(r)
	}
	if err := r.checkKEK(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// q rewrites a query written with ? placeholders for the engine.
func (r *Registry) q(s string) string { return r.d.Rebind(s) }

// begin starts a write transaction holding the registry's lock, so that
// writers in every process take turns (as SQLite's BEGIN IMMEDIATE does).
func (r *Registry) begin(ctx context.Context) (*sql.Tx, error) {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	if err := r.d.LockTx(ctx, tx, "registry"); err != nil {
		_ = tx.Rollback() // the lock error is the one to report
		return nil, err
	}
	return tx, nil
}

// checkKEK compares the recorded KEK fingerprint with r.kek.
func (r *Registry) checkKEK(ctx context.Context) error {
	fp, err := fingerprint(ctx, r.db)
	if err != nil {
		return err
	}
	r.sealed = fp != ""
	if r.kek == nil || fp != "" {
		return r.compareKEK(fp)
	}
	// No fingerprint yet: seal an empty registry from now on; refuse one
	// with secrets in the clear until they are sealed.
	tx, err := r.begin(ctx)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	// Another process may have sealed it meanwhile.
	if fp, err = fingerprint(ctx, tx); err != nil || fp != "" {
		r.sealed = fp != ""
		return errors.Join(err, r.compareKEK(fp))
	}
	var n int
	if err := tx.QueryRowContext(ctx, r.q(`SELECT COUNT(*) FROM device_keys WHERE sealed = ?`), false).Scan(&n); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("registry %s: %w (%d): seal them with: iotgw kek rotate --new KEKFILE (without a current KEK)", r.name, ErrUnsealed, n)
	}
	if _, err := tx.ExecContext(ctx, r.q(`INSERT INTO registry_meta(name, value) VALUES('kek_fingerprint', ?)`), r.kek.fp); err != nil {
		return fmt.Errorf("registry: record kek fingerprint: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("registry: record kek fingerprint: %w", err)
	}
	r.sealed = true
	return nil
}

// compareKEK checks the recorded fingerprint fp against r.kek (and r.prev).
func (r *Registry) compareKEK(fp string) error {
	if cur, _ := r.keks(); cur != nil && fp != "" && r.kekFor(fp) == nil {
		return fmt.Errorf("registry %s: %w: it was sealed with KEK %s, security.kek_file holds KEK %s%s", r.name, ErrWrongKEK, short(fp), cur.Short(), r.prevNote())
	}
	return nil
}

// prevNote names the previous KEK for messages, or is empty.
func (r *Registry) prevNote() string {
	_, prev := r.keks()
	if prev == nil {
		return ""
	}
	return " and security.previous_kek_file KEK " + prev.Short()
}

// kekFor returns the KEK (current or previous) whose fingerprint is fp, or nil.
func (r *Registry) kekFor(fp string) *KEK {
	cur, prev := r.keks()
	for _, k := range []*KEK{cur, prev} {
		if k != nil && hmac.Equal([]byte(fp), []byte(k.fp)) {
			return k
		}
	}
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func fingerprint(ctx context.Context, q querier) (string, error) {
	var fp string
	err := q.QueryRowContext(ctx, `SELECT value FROM registry_meta WHERE name = 'kek_fingerprint'`).Scan(&fp)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("registry: kek fingerprint: %w", err)
	}
	return fp, nil
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

// Sealed reports whether the registry's secrets are sealed under a KEK.
func (r *Registry) Sealed() bool { return r.sealed }

// Close closes the database (a database given to OpenDB stays open).
func (r *Registry) Close() error {
	if !r.owned {
		return nil
	}
	return r.db.Close()
}

// Path returns the database file path ("" for a registry from OpenDB).
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

// Errors about keys and revocation.
var (
	// ErrRevoked is returned when enabling or rotating a revoked device.
	ErrRevoked = errors.New("device is revoked and cannot be enabled again (register it under a new id)")
	// ErrBadOverlap is returned for a negative rotation overlap.
	ErrBadOverlap = errors.New("overlap must not be negative")
)

// KeyInfo describes one key of a device, without its secret.
type KeyInfo struct {
	ID        int64
	CreatedAt time.Time
	// ExpiresAt is when the key stops verifying; zero means never.
	ExpiresAt time.Time
}

// sealFor returns the stored form of secret and whether it is sealed,
// under the KEK the registry is sealed with as q (a transaction holding
// the registry's lock) sees it: a re-seal committed since Open is
// followed, never mixed with rows under the KEK it replaced.
func (r *Registry) sealFor(ctx context.Context, q querier, id string, keyID int64, secret string) ([]byte, bool, error) {
	k, err := r.sealingKEK(ctx, q)
	if err != nil {
		return nil, false, err
	}
	return sealWith(k, id, keyID, secret)
}

// sealingKEK returns the KEK new secrets are sealed under (nil: stored in
// the clear, in a registry that is not sealed): the one the registry was
// sealed with, which the gateway must hold.
func (r *Registry) sealingKEK(ctx context.Context, q querier) (*KEK, error) {
	k, _ := r.keks()
	if k == nil {
		if r.sealed {
			return nil, ErrSealed
		}
		return nil, nil
	}
	fp, err := fingerprint(ctx, q)
	if err != nil {
		return nil, err
	}
	if fp != "" {
		if k = r.kekFor(fp); k == nil {
			return nil, r.compareKEK(fp)
		}
	}
	return k, nil
}

// sealWith seals secret under k, or keeps it in the clear when k is nil.
func sealWith(k *KEK, id string, keyID int64, secret string) ([]byte, bool, error) {
	if k == nil {
		return []byte(secret), false, nil
	}
	b, err := k.seal(id, keyID, []byte(secret))
	return b, true, err
}

// openSecret returns the secret bytes of a stored key, opened with the
// current KEK or else the previous one.
func (r *Registry) openSecret(id string, keyID int64, stored []byte, sealed bool) ([]byte, error) {
	cur, prev := r.keks()
	switch {
	case sealed && cur == nil:
		return nil, ErrSealed
	case sealed:
		p, err := cur.open(id, keyID, stored)
		if err != nil && prev != nil {
			if q, perr := prev.open(id, keyID, stored); perr == nil {
				return q, nil
			}
		}
		return p, err
	case cur != nil || r.sealed:
		return nil, fmt.Errorf("device %s key %d: %w: a secret in the clear in a sealed registry", id, keyID, ErrOpen)
	}
	return stored, nil
}

// Add registers a new enabled device with secret as its key 1, sealed
// when the registry has a KEK, in timestamp mode.
func (r *Registry) Add(ctx context.Context, id, secret string) error {
	return r.AddDevice(ctx, NewDevice{ID: id, Secret: secret})
}

// AddDevice registers d (see NewDevice) with d.Secret as its key 1,
// sealed when the registry has a KEK.
func (r *Registry) AddDevice(ctx context.Context, d NewDevice) error {
	id, secret := d.ID, d.Secret
	if !envelope.ValidDeviceID(id) {
		return ErrBadID
	}
	if !ValidSecret(secret) {
		return ErrBadSecret
	}
	fresh, err := CheckFreshness(d.Freshness)
	if err != nil {
		return err
	}
	now := r.now().Unix()
	tx, err := r.begin(ctx)
	if err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	stored, sealed, err := r.sealFor(ctx, tx, id, 1, secret)
	if err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	_, err = tx.ExecContext(ctx, r.q(`INSERT INTO devices(device_id, enabled, created_at, freshness) VALUES(?, ?, ?, ?)`), id, !d.Disabled, now, fresh)
	if err != nil && r.d.UniqueViolation(err) {
		return fmt.Errorf("%s: %w", id, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	// A key left over from a removed device of the same id goes first.
	if _, err := tx.ExecContext(ctx, r.q(`DELETE FROM device_keys WHERE device_id = ?`), id); err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	if _, err := tx.ExecContext(ctx, r.q(`INSERT INTO device_keys(device_id, key_id, secret, sealed, created_at) VALUES(?, 1, ?, ?, ?)`),
		id, stored, sealed, now); err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("add device: %w", err)
	}
	return nil
}

// Rotate gives device id a new key with secret and returns it. Every older
// key that would outlive now+overlap now expires then (an overlap of 0
// ends them at once); keys already expired are deleted. A revoked device
// cannot be rotated.
func (r *Registry) Rotate(ctx context.Context, id, secret string, overlap time.Duration) (KeyInfo, error) {
	if !ValidSecret(secret) {
		return KeyInfo{}, ErrBadSecret
	}
	if overlap < 0 {
		return KeyInfo{}, ErrBadOverlap
	}
	now := r.now()
	tx, err := r.begin(ctx)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	var revoked sql.NullInt64
	err = tx.QueryRowContext(ctx, r.q(`SELECT revoked_at FROM devices WHERE device_id = ?`), id).Scan(&revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return KeyInfo{}, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	if revoked.Valid {
		return KeyInfo{}, fmt.Errorf("%s: %w", id, ErrRevoked)
	}
	if _, err := tx.ExecContext(ctx, r.q(`DELETE FROM device_keys WHERE device_id = ? AND expires_at IS NOT NULL AND expires_at <= ?`), id, now.Unix()); err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	var last int64
	if err := tx.QueryRowContext(ctx, r.q(`SELECT COALESCE(MAX(key_id), 0) FROM device_keys WHERE device_id = ?`), id).Scan(&last); err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	end := now.Add(overlap).Unix()
	if _, err := tx.ExecContext(ctx, r.q(`UPDATE device_keys SET expires_at = ? WHERE device_id = ? AND (expires_at IS NULL OR expires_at > ?)`), end, id, end); err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	k := KeyInfo{ID: last + 1, CreatedAt: time.Unix(now.Unix(), 0).UTC()}
	stored, sealed, err := r.sealFor(ctx, tx, id, k.ID, secret)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	if _, err := tx.ExecContext(ctx, r.q(`INSERT INTO device_keys(device_id, key_id, secret, sealed, created_at) VALUES(?, ?, ?, ?, ?)`),
		id, k.ID, stored, sealed, now.Unix()); err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return KeyInfo{}, fmt.Errorf("rotate key: %w", err)
	}
	return k, nil
}

// DeleteExpired deletes every key whose expiry is at or before now and
// returns how many it deleted.
func (r *Registry) DeleteExpired(ctx context.Context, now time.Time) (int64, error) {
	return deleteExpired(ctx, r.db, r.d, now)
}

type execer interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

func deleteExpired(ctx context.Context, db execer, d sqldb.Dialect, now time.Time) (int64, error) {
	res, err := db.ExecContext(ctx, d.Rebind(`DELETE FROM device_keys WHERE expires_at IS NOT NULL AND expires_at <= ?`), now.Unix())
	if err != nil {
		return 0, fmt.Errorf("delete expired keys: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// Keys returns the keys of device id, oldest first, without secrets.
func (r *Registry) Keys(ctx context.Context, id string) ([]KeyInfo, error) {
	rows, err := r.db.QueryContext(ctx, r.q(`SELECT key_id, created_at, expires_at FROM device_keys WHERE device_id = ? ORDER BY key_id`), id)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var out []KeyInfo
	for rows.Next() {
		var k KeyInfo
		var created int64
		var expires sql.NullInt64
		if err := rows.Scan(&k.ID, &created, &expires); err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		k.CreatedAt = time.Unix(created, 0).UTC()
		if expires.Valid {
			k.ExpiresAt = time.Unix(expires.Int64, 0).UTC()
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// List returns every device, ordered by id.
func (r *Registry) List(ctx context.Context) ([]Info, error) {
	rows, err := r.db.QueryContext(ctx, `SELECT device_id, enabled, created_at, revoked_at, freshness FROM devices ORDER BY device_id`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Info
	for rows.Next() {
		i, err := scanInfo(rows.Scan)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, i)
	}
	return out, rows.Err()
}

func scanInfo(scan func(...any) error) (Info, error) {
	var i Info
	var ts int64
	var revoked sql.NullInt64
	if err := scan(&i.ID, &i.Enabled, &ts, &revoked, &i.Freshness); err != nil {
		return i, err
	}
	i.CreatedAt = time.Unix(ts, 0).UTC()
	if revoked.Valid {
		i.RevokedAt = time.Unix(revoked.Int64, 0).UTC()
	}
	return i, nil
}

// Get returns one device.
func (r *Registry) Get(ctx context.Context, id string) (Info, error) {
	i, err := scanInfo(r.db.QueryRowContext(ctx, r.q(`SELECT device_id, enabled, created_at, revoked_at, freshness FROM devices WHERE device_id = ?`), id).Scan)
	if errors.Is(err, sql.ErrNoRows) {
		return i, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return i, fmt.Errorf("get device: %w", err)
	}
	return i, nil
}

// SetEnabled enables or disables a device. A revoked device cannot be
// enabled (ErrRevoked).
func (r *Registry) SetEnabled(ctx context.Context, id string, enabled bool) error {
	if !enabled {
		return r.change(ctx, id, `UPDATE devices SET enabled = ? WHERE device_id = ?`, false, id)
	}
	err := r.change(ctx, id, `UPDATE devices SET enabled = ? WHERE device_id = ? AND revoked_at IS NULL`, true, id)
	if errors.Is(err, ErrNotFound) {
		if i, gerr := r.Get(ctx, id); gerr == nil && i.Revoked() {
			return fmt.Errorf("%s: %w", id, ErrRevoked)
		}
	}
	return err
}

// SetFreshness changes device id's freshness mode (FreshnessTimestamp or
// FreshnessCounter). A counter-mode device's bound is the outbox's and is
// kept: switching back to counters later reopens no counter.
func (r *Registry) SetFreshness(ctx context.Context, id, mode string) error {
	fresh, err := CheckFreshness(mode)
	if err != nil {
		return err
	}
	return r.change(ctx, id, `UPDATE devices SET freshness = ? WHERE device_id = ?`, fresh, id)
}

// Revoke disables a device for good and records when: Info.RevokedAt is
// set and SetEnabled(true) refuses it. Revoking again keeps the first time.
func (r *Registry) Revoke(ctx context.Context, id string) error {
	return r.change(ctx, id, `UPDATE devices SET enabled = ?, revoked_at = COALESCE(revoked_at, ?) WHERE device_id = ?`, false, r.now().Unix(), id)
}

// Remove deletes a device and its keys.
func (r *Registry) Remove(ctx context.Context, id string) error {
	tx, err := r.begin(ctx)
	if err != nil {
		return fmt.Errorf("remove device: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if err := changeIn(ctx, tx, id, r.q(`DELETE FROM devices WHERE device_id = ?`), id); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, r.q(`DELETE FROM device_keys WHERE device_id = ?`), id); err != nil {
		return fmt.Errorf("remove device: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("remove device: %w", err)
	}
	return nil
}

func (r *Registry) change(ctx context.Context, id, q string, args ...any) error {
	return changeIn(ctx, r.db, id, r.q(q), args...)
}

func changeIn(ctx context.Context, db execer, id, q string, args ...any) error {
	res, err := db.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("update device: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	return nil
}
