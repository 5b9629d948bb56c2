package sqlitestore

import (
	"context"
	"github.com/iotgw/iotgw/pkg/outbox"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
)

// TestMigrateSeenV2: a v1 database (seen with a primary key) keeps its
// seen ids and outbox rows across the v2 migration.
func TestMigrateSeenV2(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "outbox.db")
	db, err := sqlitex.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sqlitex.Migrate(ctx, db, migrations[:1]); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Minute).Unix()
	id := [16]byte{1, 2, 3}
	if _, err := db.Exec(`INSERT INTO seen(device_id, message_id, expires) VALUES('d1', ?, ?)`, id[:], exp); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO outbox(device_id, message_id, timestamp, payload, received_at) VALUES('d1','m','1','{}',0)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	cfg := outbox.DefaultConfig()
	cfg.Path = path
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []string
	err = s.Seen(ctx, time.Now(), 0, func(dev string, gotID [16]byte, e time.Time) error {
		if gotID != id || e.Unix() != exp {
			t.Errorf("seen row %s %x %d, want d1 %x %d", dev, gotID, e.Unix(), id, exp)
		}
		got = append(got, dev)
		return nil
	})
	if err != nil || len(got) != 1 {
		t.Fatalf("seen after migration: %v, %v", got, err)
	}
	if n, err := s.Count(ctx); err != nil || n != 1 {
		t.Fatalf("outbox rows after migration: %d, %v", n, err)
	}
	// The same id recorded twice (no primary key any more) is accepted.
	rec := &outbox.Record{DeviceID: "d1", MessageID: "m2", ID: id, Timestamp: "1", Payload: []byte("{}"), ReceivedAt: time.Now(), Expires: time.Unix(exp, 0)}
	if err := s.Insert(ctx, []*outbox.Record{rec}); err != nil {
		t.Fatalf("insert a seen id twice: %v", err)
	}
}
