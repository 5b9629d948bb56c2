package test

import (
	"context"
	"errors"
	"testing"
	"time"

	sdk "github.com/iotgw/iotgw/pkg/device"
)

// TestDeviceSDKWrongSecret: a device holding a wrong secret gets the
// gateway's bad_signature notice, signed with the registered secret; the
// SDK cannot verify it and says so at once (ErrAnswerNotVerified, which
// names the likely cause), never as a reply, a rejection or a timeout.
func TestDeviceSDKWrongSecret(t *testing.T) {
	f := newFixture(t, "ws_001")
	f.startGateway(gatewayOpts{})
	cfg := f.sdkConfig("ws_001")
	cfg.Secret = []byte("a-wrong-secret-for-ws_001-0123456789")
	d := f.dialSDK(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := d.Request(ctx, []byte(`{"t":1}`))
	var rej *sdk.RejectedError
	if !errors.Is(err, sdk.ErrAnswerNotVerified) || !errors.Is(err, sdk.ErrBadReplySignature) || errors.As(err, &rej) || ctx.Err() != nil {
		t.Fatalf("wrong secret: err = %v, reply %+v; want ErrAnswerNotVerified before the deadline", err, r)
	}
	t.Logf("%v", err)
}
