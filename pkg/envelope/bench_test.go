package envelope_test

import (
	"testing"

	"github.com/iotgw/iotgw/pkg/envelope"
)

func BenchmarkParse(b *testing.B) {
	raw := []byte(goodMsg)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := envelope.Parse(raw, envelope.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	e, err := envelope.Parse([]byte(goodMsg), envelope.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	mac := envelope.NewMAC([]byte(secret))
	b.ReportAllocs()
	for b.Loop() {
		if !envelope.Verify(mac, &e) {
			b.Fatal("does not verify")
		}
	}
}
