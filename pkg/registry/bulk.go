package registry

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// NewDevice is one device for AddMany.
type NewDevice struct {
	// ID is the device id (envelope.ValidDeviceID).
	ID string
	// Secret is its first key's secret (ValidSecret).
	Secret string
	// Disabled registers the device disabled; its messages are rejected
	// as "disabled" until it is enabled.
	Disabled bool
	// Freshness is its mode: FreshnessTimestamp (or "") or
	// FreshnessCounter.
	Freshness string
}

// ExistingError is AddMany's refusal of devices that are already
// registered. It wraps ErrExists.
type ExistingError struct {
	// IDs are the devices that exist, in input order.
	IDs []string
}

func (e *ExistingError) Error() string {
	const show = 10
	ids := e.IDs
	more := ""
	if len(ids) > show {
		ids, more = ids[:show], fmt.Sprintf(" and %d more", len(e.IDs)-show)
	}
	if len(e.IDs) == 1 {
		return "1 device already exists: " + e.IDs[0]
	}
	return fmt.Sprintf("%d devices already exist: %s%s", len(e.IDs), strings.Join(ids, ", "), more)
}

// Unwrap makes errors.Is(err, ErrExists) true.
func (e *ExistingError) Unwrap() error { return ErrExists }

// BulkOptions adjusts AddMany.
type BulkOptions struct {
	// SkipExisting leaves devices that are already registered as they
	// are (their secrets are not changed) instead of refusing them all.
	SkipExisting bool
	// BeforeCommit, if not nil, is called inside the transaction, after
	// every row is written and before the commit, with the devices being
	// added (the skipped ones left out). If it returns an error nothing is
	// committed. Callers put there what must exist if and only if the
	// devices do (a file of generated secrets, certificates), and undo it
	// if AddMany then fails.
	BeforeCommit func(added []NewDevice) error
}

// AddMany registers devs, each enabled (unless Disabled) with its secret
// as key 1, sealed when the registry has a KEK, in one transaction: either
// every device is added or none is. It returns the devices added and the
// ids skipped (with opts.SkipExisting).
//
// Every id and secret is checked first; a duplicate id in devs is an
// error. A device already registered fails the whole call with an
// *ExistingError naming every such id, unless opts.SkipExisting is set.
// The registry's write lock is held throughout, so concurrent writers
// wait rather than interleave.
func (r *Registry) AddMany(ctx context.Context, devs []NewDevice, opts BulkOptions) (added []NewDevice, skipped []string, err error) {
	seen := make(map[string]bool, len(devs))
	for _, d := range devs {
		if !envelope.ValidDeviceID(d.ID) {
			return nil, nil, fmt.Errorf("add devices: %q: %w", d.ID, ErrBadID)
		}
		if !ValidSecret(d.Secret) {
			return nil, nil, fmt.Errorf("add devices: %s: %w", d.ID, ErrBadSecret)
		}
		if seen[d.ID] {
			return nil, nil, fmt.Errorf("add devices: %s is listed twice", d.ID)
		}
		if _, err := CheckFreshness(d.Freshness); err != nil {
			return nil, nil, fmt.Errorf("add devices: %s: %w", d.ID, err)
		}
		seen[d.ID] = true
	}
	tx, err := r.begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("add devices: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op

	// Which exist: one read of every id, under the lock.
	existing, err := existingIDs(ctx, tx, seen)
	if err != nil {
		return nil, nil, fmt.Errorf("add devices: %w", err)
	}
	var clash []string
	for _, d := range devs {
		if existing[d.ID] {
			clash = append(clash, d.ID)
			continue
		}
		added = append(added, d)
	}
	if len(clash) > 0 && !opts.SkipExisting {
		return nil, nil, &ExistingError{IDs: clash}
	}

	// Rows go in batches of bulkBatch devices, a few statements per batch
	// rather than per device: on PostgreSQL each statement fires the
	// registry's change trigger, which updates one version row.
	now := r.now().Unix()
	kek, err := r.sealingKEK(ctx, tx)
	if err != nil {
		return nil, nil, fmt.Errorf("add devices: %w", err)
	}
	for start := 0; start < len(added); start += bulkBatch {
		batch := added[start:min(start+bulkBatch, len(added))]
		devRows := make([]any, 0, 4*len(batch))
		keyRows := make([]any, 0, 4*len(batch))
		ids := make([]any, 0, len(batch))
		for _, d := range batch {
			stored, sealed, err := sealWith(kek, d.ID, 1, d.Secret)
			if err != nil {
				return nil, nil, fmt.Errorf("add devices: %s: %w", d.ID, err)
			}
			fresh, _ := CheckFreshness(d.Freshness) // checked above
			devRows = append(devRows, d.ID, !d.Disabled, now, fresh)
			keyRows = append(keyRows, d.ID, stored, sealed, now)
			ids = append(ids, d.ID)
		}
		if _, err := tx.ExecContext(ctx, r.q(`INSERT INTO devices(device_id, enabled, created_at, freshness) VALUES `+placeholders(len(batch), "(?, ?, ?, ?)")), devRows...); err != nil {
			return nil, nil, fmt.Errorf("add devices: %w", err)
		}
		// Keys left over from removed devices of the same ids go first, as
		// in Add.
		if _, err := tx.ExecContext(ctx, r.q(`DELETE FROM device_keys WHERE device_id IN (`+placeholders(len(batch), "?")+`)`), ids...); err != nil {
			return nil, nil, fmt.Errorf("add devices: %w", err)
		}
		if _, err := tx.ExecContext(ctx, r.q(`INSERT INTO device_keys(device_id, key_id, secret, sealed, created_at) VALUES `+placeholders(len(batch), "(?, 1, ?, ?, ?)")), keyRows...); err != nil {
			return nil, nil, fmt.Errorf("add devices: %w", err)
		}
	}
	if opts.BeforeCommit != nil {
		if err := opts.BeforeCommit(added); err != nil {
			return nil, nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, fmt.Errorf("add devices: commit: %w", err)
	}
	if len(clash) > 0 {
		skipped = clash
	}
	return added, skipped, nil
}

// bulkBatch is how many devices one AddMany statement writes: 4 bound
// values each, under SQLite's historical limit of 999 per statement.
const bulkBatch = 200

// placeholders returns n copies of one, comma-separated.
func placeholders(n int, one string) string {
	return strings.TrimSuffix(strings.Repeat(one+", ", n), ", ")
}

// existingIDs returns which of the ids in want are registered, read in tx.
func existingIDs(ctx context.Context, tx *sql.Tx, want map[string]bool) (map[string]bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT device_id FROM devices`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	existing := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		if want[id] {
			existing[id] = true
		}
	}
	return existing, rows.Err()
}
