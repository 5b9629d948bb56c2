package forward

import "time"

// SetClientClock replaces c's clock (the signature timestamp) in tests.
func SetClientClock(c *Client, now func() time.Time) { c.now = now }
