package envelope_test

import (
	"fmt"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// The secret of the examples; a real one comes from `iotgw device add`.
const exampleSecret = "a17513da805d98386da054eb4bcd037332257d556e379992293333e283e52a17"

func ExampleNew() {
	e := envelope.New([]byte(exampleSecret), "sensor_001", 1727712000,
		"550e8400-e29b-41d4-a716-446655440000", []byte(`{"temperature":22.5}`))
	fmt.Printf("%x\n", e.Signature)
	// Output:
	// 340b3bde06ab3037322bb2931e4f0172dc9a1f50ca04129d7c97d67518418353
}

func ExampleAppendJSON() {
	e := envelope.New([]byte(exampleSecret), "sensor_001", 1727712000,
		"550e8400-e29b-41d4-a716-446655440000", []byte(`{"temperature":22.5}`))
	fmt.Println(string(envelope.AppendJSON(nil, &e)))
	// Output:
	// {"device_id":"sensor_001","timestamp":1727712000,"message_id":"550e8400-e29b-41d4-a716-446655440000","payload":{"temperature":22.5},"signature":"340b3bde06ab3037322bb2931e4f0172dc9a1f50ca04129d7c97d67518418353"}
}

func ExampleParse() {
	raw := []byte(`{"device_id":"sensor_001","timestamp":1727712000,"message_id":"550e8400-e29b-41d4-a716-446655440000","payload": { "temperature" : 22.5 },"signature":"340b3bde06ab3037322bb2931e4f0172dc9a1f50ca04129d7c97d67518418353"}`)
	e, err := envelope.Parse(raw, envelope.Limits{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(e.DeviceID, e.Timestamp, string(e.MessageID))
	fmt.Printf("payload %s\n", e.Payload) // exactly as sent, inner whitespace included

	_, err = envelope.Parse([]byte(`{"device_id":"sensor_001","timestamp":1.5}`), envelope.Limits{})
	fmt.Println(err)
	// Output:
	// sensor_001 1727712000 550e8400-e29b-41d4-a716-446655440000
	// payload { "temperature" : 22.5 }
	// timestamp: must be an unsigned integer of Unix seconds
}

func ExampleSigningBytes() {
	fmt.Printf("%q\n", envelope.SigningBytes(nil, "sensor_001", []byte("1727712000"),
		[]byte("550e8400-e29b-41d4-a716-446655440000"), []byte(`{"temperature":22.5}`)))
	// Output:
	// "sensor_001\n1727712000\n550e8400-e29b-41d4-a716-446655440000\n{\"temperature\":22.5}"
}

func ExampleVerify() {
	raw := []byte(`{"device_id":"sensor_001","timestamp":1727712000,"message_id":"550e8400-e29b-41d4-a716-446655440000","payload":{"temperature":99.9},"signature":"340b3bde06ab3037322bb2931e4f0172dc9a1f50ca04129d7c97d67518418353"}`)
	e, err := envelope.Parse(raw, envelope.Limits{})
	if err != nil {
		fmt.Println(err)
		return
	}
	mac := envelope.NewMAC([]byte(exampleSecret)) // reusable: Verify resets it
	fmt.Println("tampered payload verifies:", envelope.Verify(mac, &e))
	// Output:
	// tampered payload verifies: false
}

func ExampleReplyPayload() {
	fmt.Println(string(envelope.ReplyPayload([]byte("550e8400-e29b-41d4-a716-446655440000"), 200, []byte(`{"ok":true}`))))
	fmt.Println(string(envelope.ReplyPayload([]byte("550e8400-e29b-41d4-a716-446655440000"), 503, []byte("try later"))))
	// Output:
	// {"in_reply_to":"550e8400-e29b-41d4-a716-446655440000","status":200,"body":{"ok":true}}
	// {"in_reply_to":"550e8400-e29b-41d4-a716-446655440000","status":503,"body":"try later"}
}

func ExampleRejectionPayload() {
	fmt.Println(string(envelope.RejectionPayload([]byte("550e8400-e29b-41d4-a716-446655440000"), "stale")))
	fmt.Println(string(envelope.RejectionPayload(nil, "malformed")))
	// Output:
	// {"in_reply_to":"550e8400-e29b-41d4-a716-446655440000","error":"stale"}
	// {"in_reply_to":null,"error":"malformed"}
}

// A device verifies a downlink (reply or notice) with the downlink key
// derived from its secret; the uplink key does not verify it.
func ExampleNewDownlinkMAC() {
	fmt.Println(string(envelope.DownlinkKey([]byte(exampleSecret))))
	raw := []byte(`{"device_id":"sensor_001","timestamp":1727712000,"message_id":"7d3f1c2a-8e4b-4d5c-9e6f-0a1b2c3d4e5f","payload":{"in_reply_to":"550e8400-e29b-41d4-a716-446655440000","status":200,"body":{"ok":true}},"signature":"3ab259e72207cd523bf1e15e5aeb0ddd4798d42cd5840aaed63eacd32b106db1"}`)
	e, err := envelope.Parse(raw, envelope.Limits{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("downlink key verifies:", envelope.Verify(envelope.NewDownlinkMAC([]byte(exampleSecret)), &e))
	fmt.Println("uplink key verifies:", envelope.Verify(envelope.NewMAC([]byte(exampleSecret)), &e))
	// Output:
	// 5ad2af93196d1b64e220393f7a740bc23d970d35234992d89734ee93a064a32b
	// downlink key verifies: true
	// uplink key verifies: false
}
