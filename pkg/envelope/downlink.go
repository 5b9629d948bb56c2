package envelope

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
)

// DownlinkLabel is the message that derives the downlink key from a device
// secret. Its own label keeps a downlink signature from ever verifying as an
// uplink one (and back): a reflected reply or notice is a bad_signature.
const DownlinkLabel = "iotgw/v1/downlink"

// DownlinkKey returns the key that signs every downlink (replies and
// rejection notices) of the device whose shared secret is secret:
//
//	K_down = HMAC-SHA256(key = secret, message = "iotgw/v1/downlink")
//
// as 64 lowercase hex characters. A downlink is signed exactly like an
// uplink, with these 64 ASCII bytes in place of the secret. The result is
// key material: never log it.
func DownlinkKey(secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(DownlinkLabel)) //nolint:errcheck // hash writes never fail
	var sum [sha256.Size]byte
	return hex.AppendEncode(make([]byte, 0, SignatureLen), m.Sum(sum[:0]))
}

// NewDownlinkMAC returns an HMAC-SHA256 for signing or verifying the
// downlinks of the device whose shared secret is secret (keyed with
// DownlinkKey(secret)). Use it with SignWith and Verify.
func NewDownlinkMAC(secret []byte) hash.Hash { return NewMAC(DownlinkKey(secret)) }

// SignDownlink computes the downlink signature of e for the device whose
// shared secret is secret.
func SignDownlink(secret []byte, e *Envelope) [sha256.Size]byte {
	return SignWith(NewDownlinkMAC(secret), e)
}
