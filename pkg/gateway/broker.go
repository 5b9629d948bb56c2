package gateway

import "context"

// WatchBroker blocks until ctx ends (returning nil) or the gateway has
// been without its broker connections for mqtt.max_disconnected (an error
// wrapping mqttio.ErrBrokerLost). "iotgw serve" then stops the gateway
// and exits non-zero, so that its supervisor's restart policy recovers
// it.
func (g *Gateway) WatchBroker(ctx context.Context) error { return g.mqtt.Watch(ctx) }
