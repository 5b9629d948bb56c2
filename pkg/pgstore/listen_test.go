package pgstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
)

// TestListenReconnects: Listen hears a notification, survives its
// connection being killed (reporting the loss), calls fn once per channel
// after reconnecting (notifications meanwhile may be lost), and hears the
// next notification.
func TestListenReconnects(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := pgstore.Open(ctx, pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	calls := make(chan string, 16)
	var mu sync.Mutex
	var errs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		pgstore.Listen(ctx, db, []string{pgstore.RegistryChannel, "iotgw_outbox"}, func(ch string) { calls <- ch },
			func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() })
	}()
	expect := func(what string, want ...string) {
		t.Helper()
		got := map[string]bool{}
		for len(got) < len(want) {
			select {
			case ch := <-calls:
				got[ch] = true
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: heard %v, want %v", what, got, want)
			}
		}
		for _, w := range want {
			if !got[w] {
				t.Fatalf("%s: heard %v, want %v", what, got, want)
			}
		}
	}
	expect("connect", pgstore.RegistryChannel, "iotgw_outbox")
	if _, err := db.Pool.Exec(ctx, `SELECT pg_notify('iotgw_outbox', '')`); err != nil {
		t.Fatal(err)
	}
	expect("notify", "iotgw_outbox")
	var killed int
	if err := db.Pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, pgstore.ListenApplication).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("kill the listener: %d, %v", killed, err)
	}
	expect("reconnect", pgstore.RegistryChannel, "iotgw_outbox")
	if _, err := db.Pool.Exec(ctx, `INSERT INTO registry_meta(name, value) VALUES('x', 'y')`); err != nil {
		t.Fatal(err)
	}
	expect("trigger", pgstore.RegistryChannel)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(errs) == 0 {
		t.Fatal("the lost connection was not reported")
	}
}
