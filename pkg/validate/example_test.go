package validate_test

import (
	"context"
	"fmt"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

// exampleKeys is a one-device KeyStore.
type exampleKeys struct{ id, secret string }

func (k exampleKeys) Device(_ context.Context, id string) (validate.Device, error) {
	if id != k.id {
		return validate.Device{}, validate.ErrUnknownDevice
	}
	return validate.Device{Secret: []byte(k.secret), Enabled: true}, nil
}

func ExampleValidator_Check() {
	const secret = "a17513da805d98386da054eb4bcd037332257d556e379992293333e283e52a17"
	now := func() time.Time { return time.Unix(1727712030, 0) }
	v, err := validate.New(validate.DefaultConfig(), exampleKeys{"sensor_001", secret}, replay.NewMemory(0, now), now)
	if err != nil {
		fmt.Println(err)
		return
	}
	e := envelope.New([]byte(secret), "sensor_001", 1727712000, "550e8400-e29b-41d4-a716-446655440000", []byte(`{"temperature":22.5}`))
	raw := envelope.AppendJSON(nil, &e)

	ctx := context.Background()
	for _, topicDevice := range []string{"sensor_002", "sensor_001", "sensor_001"} {
		res, err := v.Check(ctx, topicDevice, raw)
		switch {
		case err != nil: // infrastructure fault: do not ack, retry later
			fmt.Println("error:", err)
		case res.Accepted():
			fmt.Println("accepted", string(res.Envelope.Payload), "until", res.Expires.Unix())
		default:
			fmt.Println("rejected:", res.Rejection.Reason)
		}
	}
	// Output:
	// rejected: identity_mismatch
	// accepted {"temperature":22.5} until 1727712300
	// rejected: replay
}
