package registry

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/iotgw/iotgw/pkg/internal/secretfile"
)

// Errors about sealing.
var (
	// ErrSealed is returned when the registry's secrets are sealed and no
	// KEK was given.
	ErrSealed = errors.New("registry secrets are sealed: set security.kek_file (IOTGW_SECURITY_KEK_FILE)")
	// ErrWrongKEK is returned when the KEK given is not the one the
	// registry was sealed with.
	ErrWrongKEK = errors.New("wrong KEK")
	// ErrUnsealed is returned when a KEK is given but the registry holds
	// secrets stored in the clear.
	ErrUnsealed = errors.New("registry holds unsealed secrets")
	// ErrOpen is returned when a sealed secret does not open: the row was
	// altered, swapped with another row or sealed under another KEK.
	ErrOpen = errors.New("sealed secret does not open")
	// ErrBadKEK is returned for a KEK file of the wrong shape.
	ErrBadKEK = errors.New("KEK file must hold 32 raw bytes or 64 hex characters")
)

// Labels: one derived key per purpose (the KEK itself is never used directly).
const (
	sealLabel        = "iotgw/v1/kek/seal"
	fingerprintLabel = "iotgw/v1/kek/fingerprint"
	adLabel          = "iotgw/v1/device-secret"
	sealVersion      = 1
)

// KEK is a key-encryption key: it seals device secrets at rest with
// AES-256-GCM. Its bytes never leave this type; Fingerprint identifies it.
type KEK struct {
	aead cipher.AEAD
	fp   string
}

// ParseKEK builds a KEK from 32 raw bytes or 64 hex characters (one
// trailing line end allowed).
func ParseKEK(b []byte) (*KEK, error) {
	key := b
	if len(b) != 32 {
		s := string(b)
		for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
			s = s[:len(s)-1]
		}
		if len(s) != 64 {
			return nil, ErrBadKEK
		}
		k, err := hex.DecodeString(s)
		if err != nil {
			return nil, ErrBadKEK
		}
		key = k
		defer clear(k)
	}
	seal := derive(key, sealLabel)
	defer clear(seal)
	blk, err := aes.NewCipher(seal)
	if err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	return &KEK{aead: aead, fp: hex.EncodeToString(derive(key, fingerprintLabel))}, nil
}

// LoadKEK reads a KEK file with secretfile.Read (refusing a file other
// users can read) and parses it. Errors name the file, never its contents.
func LoadKEK(path string) (*KEK, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return nil, err
	}
	k, err := ParseKEK(b)
	clear(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// NewKEKHex returns a fresh KEK file body: 32 random bytes as 64 hex
// characters and a line end.
func NewKEKHex() ([]byte, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("generate kek: %w", err)
	}
	return []byte(hex.EncodeToString(b[:]) + "\n"), nil
}

// Fingerprint is HMAC-SHA256(KEK, "iotgw/v1/kek/fingerprint") in hex: it
// identifies the KEK without revealing it.
func (k *KEK) Fingerprint() string { return k.fp }

// Short is the fingerprint's first 16 hex characters, for messages.
func (k *KEK) Short() string { return k.fp[:16] }

func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// ad binds a sealed secret to its device and key.
func ad(deviceID string, keyID int64) []byte {
	return []byte(adLabel + "\x00" + deviceID + "\x00" + strconv.FormatInt(keyID, 10))
}

// seal returns version || nonce || AES-256-GCM(secret, ad(device, key)).
func (k *KEK) seal(deviceID string, keyID int64, secret []byte) ([]byte, error) {
	out := make([]byte, 1+k.aead.NonceSize(), 1+k.aead.NonceSize()+len(secret)+k.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	// The nonce is out[1:], filled from crypto/rand just above: a fresh
	// random 96-bit nonce per seal (TestSealNonceIsFresh).
	return k.aead.Seal(out, out[1:], secret, ad(deviceID, keyID)), nil //nolint:gosec // G407: out[1:] is crypto/rand output, not a hard-coded nonce (make only sized it)
}

// open reverses seal. A blob sealed for another device or key, or under
// another KEK, fails with ErrOpen naming the device and key.
func (k *KEK) open(deviceID string, keyID int64, blob []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(blob) < 1+n+k.aead.Overhead() || blob[0] != sealVersion {
		return nil, fmt.Errorf("device %s key %d: %w (not a sealed secret)", deviceID, keyID, ErrOpen)
	}
	p, err := k.aead.Open(nil, blob[1:1+n], blob[1+n:], ad(deviceID, keyID))
	if err != nil {
		return nil, fmt.Errorf("device %s key %d: %w (row altered, swapped, or sealed under another KEK)", deviceID, keyID, ErrOpen)
	}
	return p, nil
}
