package test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	sdk "github.com/iotgw/iotgw/pkg/device"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/test/harness"
)

// sdkConfig is the pkg/device configuration of fixture device id.
func (f *fixture) sdkConfig(id string) sdk.Config {
	crt, key := pki.DeviceCert(f.certs, id)
	return sdk.Config{
		Broker:         f.broker.Addr,
		CAFile:         pki.Paths(f.certs).CACert,
		CertFile:       crt,
		KeyFile:        key,
		DeviceID:       id,
		Secret:         []byte(f.secrets[id]),
		ConnectTimeout: 5 * time.Second,
		NoReconnect:    true,
	}
}

func (f *fixture) dialSDK(cfg sdk.Config) *sdk.Device {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := sdk.Dial(ctx, cfg)
	if err != nil {
		f.t.Fatalf("sdk.Dial %s: %v", cfg.DeviceID, err)
	}
	f.t.Cleanup(d.Close)
	return d
}

// TestDeviceSDK drives pkg/device against a real Mosquitto and a real
// iotgw serve: a Request gets the backend's answer, verified with the
// downlink key; a message the gateway rejects (a device clock 10 minutes
// behind) comes back as a *sdk.RejectedError with its reason.
func TestDeviceSDK(t *testing.T) {
	f := newFixture(t, "sdk_001")
	f.startGateway(gatewayOpts{})
	d := f.dialSDK(f.sdkConfig("sdk_001"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	r, err := d.Request(ctx, []byte(`{"temperature":21.5}`))
	if err != nil {
		t.Fatalf("Request: %v", err)
	}
	if r.Status != 200 || r.Rejected() || r.InReplyTo == "" {
		t.Fatalf("reply = %+v, want status 200 to our message", r)
	}
	reqs := f.backend.waitCount(t, 1, 10*time.Second)
	if reqs[0].Header.Get("X-Message-Id") != r.InReplyTo || !strings.Contains(string(reqs[0].Body), `"temperature":21.5`) {
		t.Fatalf("backend got %s, want message %s", reqs[0].Body, r.InReplyTo)
	}

	// Resending a message that was accepted (a retry after a lost reply)
	// is answered "replay", and not forwarded twice.
	m := d.Sign(time.Now(), []byte(`{"temperature":21.55}`))
	if r, err := d.RequestMessage(ctx, m); err != nil || r.Status != 200 {
		t.Fatalf("RequestMessage: %+v, %v", r, err)
	}
	var rej *sdk.RejectedError
	if _, err := d.RequestMessage(ctx, m); !errors.As(err, &rej) || rej.Reason != "replay" || rej.MessageID != m.ID {
		t.Fatalf("resent message: err = %v, want *RejectedError{replay}", err)
	}

	// Publish: acknowledged by the broker, then forwarded.
	id, err := d.Publish(ctx, []byte(`{"temperature":21.6}`))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	reqs = f.backend.waitCount(t, 3, 10*time.Second)
	if reqs[2].Header.Get("X-Message-Id") != id {
		t.Fatalf("backend got %s, want message %s", reqs[2].Body, id)
	}

	// A device whose clock is 10 minutes late: rejected as stale. It is
	// the same certificate, so it replaces the first connection (client
	// id = CN).
	d.Close()
	cfg := f.sdkConfig("sdk_001")
	cfg.Now = func() time.Time { return time.Now().Add(-10 * time.Minute) }
	late := f.dialSDK(cfg)
	r, err = late.Request(ctx, []byte(`{"temperature":21.7}`))
	if !errors.As(err, &rej) || rej.Reason != "stale" {
		t.Fatalf("Request with a late clock: err = %v, want *RejectedError{stale}", err)
	}
	if r == nil || r.InReplyTo != rej.MessageID || r.Reason != "stale" {
		t.Fatalf("rejection reply = %+v", r)
	}
	if n := len(f.backend.requests()); n != 3 {
		t.Fatalf("backend got %d requests, want 3", n)
	}
}

// TestDeviceSDKRefusesForgedReplies: with no gateway running, a forger
// holding the gateway's certificate (the only identity the ACL lets write
// device/<id>/response) answers each uplink with a reply signed with the
// device's uplink key (a reflected signature, what a gateway without
// the downlink key would send) or with a made-up key. pkg/device refuses
// both with ErrBadReplySignature, never as a reply or a rejection.
func TestDeviceSDKRefusesForgedReplies(t *testing.T) {
	f := newFixture(t, "sdk_002")
	secret := []byte(f.secrets["sdk_002"])
	keys := map[string][]byte{
		"uplink key":  secret,
		"made-up key": envelope.DownlinkKey([]byte("not the secret")),
	}
	keyCh := make(chan []byte, 1) // the forger's key for the next uplink
	forger, err := harness.Connect(t, f.broker.GatewayAddr, harness.TLSConfig(t, f.certs, pki.GatewayIdentity), "iotgw:forger")
	if err != nil {
		t.Fatalf("forger connect: %v", err)
	}
	tok := forger.Subscribe("device/+/data", 1, func(c mqtt.Client, m mqtt.Message) {
		e, err := envelope.Parse(m.Payload(), envelope.Limits{})
		if err != nil {
			return
		}
		k := <-keyCh
		forged := envelope.New(k, e.DeviceID, time.Now().Unix(), string(envelope.NewMessageID()),
			envelope.ReplyPayload(e.MessageID, 200, []byte(`{"forged":true}`)))
		c.Publish("device/"+e.DeviceID+"/response", 1, false, envelope.AppendJSON(nil, &forged))
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("forger subscribe: %v", tok.Error())
	}
	d := f.dialSDK(f.sdkConfig("sdk_002"))
	for name, k := range keys {
		keyCh <- k
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := d.Request(ctx, []byte(`{"t":1}`))
		cancel()
		var rej *sdk.RejectedError
		if !errors.Is(err, sdk.ErrBadReplySignature) || errors.As(err, &rej) {
			t.Fatalf("reply forged with the %s: err = %v, reply %+v; want ErrBadReplySignature", name, err, r)
		}
	}

	// The genuine gateway's reply still verifies on the same connection.
	forger.Unsubscribe("device/+/data").WaitTimeout(5 * time.Second)
	f.startGateway(gatewayOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := d.Request(ctx, []byte(`{"t":2}`))
	if err != nil || r.Status != 200 {
		t.Fatalf("genuine reply: %+v, %v", r, err)
	}
}
