package envelope

import (
	"crypto/rand"
	"encoding/hex"
)

// NewMessageID returns a fresh random (version 4) UUID in canonical
// lowercase text, the form message_id must have. It reads crypto/rand, the
// one source of randomness this package uses; everything else here is pure.
func NewMessageID() []byte {
	var b [16]byte
	rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	out := make([]byte, 36)
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return out
}
