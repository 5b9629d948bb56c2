package validate

import (
	"bytes"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// downPool is a macPool keyed with a device's downlink key, remembering the
// secret it was derived from so a changed secret rebuilds it.
type downPool struct {
	secret []byte
	*macPool
}

// downMACFor returns the downlink pool for id, deriving the downlink key
// only when the device's secret changed.
func (v *Validator) downMACFor(id string, secret []byte) *downPool {
	if p, ok := v.downMacs.Load(id); ok && bytes.Equal(p.(*downPool).secret, secret) {
		return p.(*downPool)
	}
	p := &downPool{secret: append([]byte(nil), secret...), macPool: newMACPool(envelope.DownlinkKey(secret))}
	v.downMacs.Store(id, p)
	return p
}
