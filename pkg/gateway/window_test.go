package gateway

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
	"github.com/iotgw/iotgw/pkg/validate"
)

// testGatewayConfig returns a Config for New with real files in dir (the
// broker is never dialled: New does not connect).
func testGatewayConfig(t *testing.T, dir string) Config {
	t.Helper()
	if err := pki.Init(dir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MQTT.Broker = "ssl://127.0.0.1:1"
	cfg.MQTT.CAFile, cfg.MQTT.CertFile, cfg.MQTT.KeyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "gateway.crt"), filepath.Join(dir, "gateway.key")
	cfg.Registry.Path = filepath.Join(dir, "registry.db")
	cfg.Outbox.Path = filepath.Join(dir, "outbox.db")
	cfg.Backend.URL = "http://127.0.0.1:1/ingest"
	cfg.HTTP.Listen = ""
	return cfg
}

// TestRestartKeepsReplayWindow: an id accepted under one max_clock_skew
// must stay a replay after a restart for as long as a copy passes the
// freshness check of the gateway now running: with the skew raised across
// the restart, and with the clock stepped forward while it was down.
func TestRestartKeepsReplayWindow(t *testing.T) {
	base := time.Unix(1727712000, 0)
	tests := []struct {
		name     string
		skewThen time.Duration // when the message was accepted (at base)
		skewNow  time.Duration // after the restart
		restart  time.Duration // restart and copy, after base
		prunedAt time.Duration // when the first run pruned its seen ids (0: never)
	}{
		{"skew raised, copy past the old window", 5 * time.Minute, 10 * time.Minute, 7 * time.Minute, 0},
		{"skew raised, copy inside the old window", 5 * time.Minute, 10 * time.Minute, 4 * time.Minute, 0},
		// Down for a while, then the clock stepped 4 min forward at boot,
		// with the skew raised: the copy is still fresh under the new skew.
		{"forward clock step and raised skew", 5 * time.Minute, 15 * time.Minute, 4*time.Minute + 4*time.Minute, 0},
		{"same skew, forward clock step inside the window", 5 * time.Minute, 5 * time.Minute, 4*time.Minute + 59*time.Second, 0},
		// The first run pruned the id at 6 min (past its 5 min window);
		// under a 10 min skew a copy at 7 min is fresh, and its id is gone:
		// the gateway must refuse what it can no longer vouch for.
		{"skew raised after the id was pruned", 5 * time.Minute, 10 * time.Minute, 7 * time.Minute, 6 * time.Minute},
		// The clock stepped back 3 min across the restart, after the prune.
		{"backward clock step after the id was pruned", 5 * time.Minute, 5 * time.Minute, 4 * time.Minute, 7 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			cfg := testGatewayConfig(t, dir)
			reg, err := registry.Open(ctx, cfg.Registry.Path)
			if err != nil {
				t.Fatal(err)
			}
			secret, _ := registry.NewSecret()
			if err := reg.Add(ctx, "sensor_001", secret); err != nil {
				t.Fatal(err)
			}
			reg.Close()
			// The first run accepted the message at base, under skewThen,
			// and stored it with its id (as Gateway.handle does).
			msgID := string(envelope.NewMessageID())
			e := envelope.New([]byte(secret), "sensor_001", base.Unix(), msgID, []byte(`{"t":1}`))
			raw := envelope.AppendJSON(nil, &e)
			st, err := sqlitestore.Open(ctx, cfg.Outbox)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Insert(ctx, []*outbox.Record{{DeviceID: "sensor_001", MessageID: msgID, Timestamp: string(e.TimestampRaw),
				ID: e.UUID(), Payload: e.Payload, ReceivedAt: base, Expires: base.Add(tc.skewThen)}}); err != nil {
				t.Fatal(err)
			}
			if tc.prunedAt > 0 {
				if _, err := st.PruneSeen(ctx, base.Add(tc.prunedAt), tc.skewThen); err != nil {
					t.Fatal(err)
				}
			}
			st.Close()

			cfg.Validation.MaxClockSkew = tc.skewNow
			now := base.Add(tc.restart)
			g, err := New(ctx, cfg, zap.NewNop(), func() time.Time { return now })
			if err != nil {
				t.Fatal(err)
			}
			defer g.close()
			res, err := g.validator.Check(ctx, "sensor_001", raw)
			if err != nil {
				t.Fatal(err)
			}
			if res.Accepted() || res.Rejection.Reason != validate.Replay {
				t.Fatalf("copy %s after acceptance, skew %s → %s: verdict %v, want replay", tc.restart, tc.skewThen, tc.skewNow, res.Rejection)
			}
		})
	}
}
