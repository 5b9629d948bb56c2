package gateway

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
)

// reloadKEKOnHUP re-reads the KEK files on each SIGHUP until ctx ends (see
// reloadKEK). Without it a SIGHUP would end the process.
func (g *Gateway) reloadKEKOnHUP(ctx context.Context) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	defer signal.Stop(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			g.reloadKEK()
		}
	}
}

// reloadKEK re-reads the files security.kek_file and
// security.previous_kek_file name (the paths are the config's at start),
// hands the KEKs to the registry and reloads the cache at once, so that a
// registry re-sealed under a new KEK (iotgw kek rotate) opens again
// without a restart. Files that do not load leave the KEKs in use and are
// logged; a pair that does not match the registry fails closed as any
// wrong KEK does (key_unavailable, /readyz stale).
func (g *Gateway) reloadKEK() {
	cur, prev, err := g.cfg.Security.LoadKEKs()
	if err != nil {
		g.log.Error("SIGHUP: KEK files not reloaded; the KEKs in use stay", zap.Error(err))
		return
	}
	if cur == nil {
		g.log.Warn("SIGHUP: no security.kek_file configured; nothing to reload")
		return
	}
	g.reg.SetKEKs(cur, prev)
	g.keys.Reload()
	fields := []zap.Field{zap.String("kek", cur.Short())}
	if prev != nil {
		fields = append(fields, zap.String("previous_kek", prev.Short()))
	}
	g.log.Info("SIGHUP: KEK files reloaded; reloading the registry", fields...)
}
