package device

import (
	"encoding/json"
	"fmt"
	"hash"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// Reply is one downlink from the gateway on device/<id>/response: the
// backend's answer to a forwarded message, a rejection notice, or the
// answer to a time request (SyncTime).
type Reply struct {
	// InReplyTo is the uplink message id it answers; "" when the gateway
	// could not read one (a notice about a malformed message).
	InReplyTo string
	// Status is the backend's HTTP status after a forward, 0 in a notice.
	Status int
	// Body is the backend's body after a forward (JSON; a JSON string when
	// the body was not JSON).
	Body json.RawMessage
	// Truncated is true when Body was cut to fit the downlink size limit.
	Truncated bool
	// Reason is the rejection reason code in a notice, "" after a forward.
	Reason string
	// TimeFor is the nonce a time reply answers (docs/PROTOCOL.md,
	// section 4c), "" in any other downlink. SyncTime checks a time reply
	// byte for byte (envelope.CheckTimeReply) before it trusts its time.
	TimeFor string
	// MessageID is the downlink's own message id.
	MessageID string
	// ReceivedAt is when it arrived, by Config.Now.
	ReceivedAt time.Time
	// Raw is the downlink exactly as received.
	Raw []byte
}

// Rejected reports whether r is a rejection notice.
func (r *Reply) Rejected() bool { return r.Reason != "" }

// parseDownlink parses raw as a downlink for device id and verifies its
// signature with mac (envelope.NewDownlinkMAC of the device's secret). The
// Reply is never nil; on error it holds what could be read.
func parseDownlink(id string, mac hash.Hash, raw []byte, at time.Time) (*Reply, error) {
	r := &Reply{ReceivedAt: at, Raw: raw}
	e, err := envelope.Parse(raw, envelope.Limits{})
	if err != nil {
		return r, fmt.Errorf("%w: %w", ErrMalformedReply, err)
	}
	r.MessageID = string(e.MessageID)
	var p struct {
		InReplyTo *string         `json:"in_reply_to"`
		Status    int             `json:"status"`
		Body      json.RawMessage `json:"body"`
		Truncated bool            `json:"truncated"`
		Error     string          `json:"error"`
		TimeFor   string          `json:"time_for"`
	}
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		return r, fmt.Errorf("%w: payload: %w", ErrMalformedReply, err)
	}
	if p.InReplyTo != nil {
		r.InReplyTo = *p.InReplyTo
	}
	r.Status, r.Body, r.Truncated, r.Reason, r.TimeFor = p.Status, p.Body, p.Truncated, p.Error, p.TimeFor
	if e.DeviceID != id {
		return r, fmt.Errorf("%w: it names device %q", ErrBadReplySignature, e.DeviceID)
	}
	if !envelope.Verify(mac, &e) {
		return r, ErrBadReplySignature
	}
	if r.Reason == "" && r.Status == 0 && r.TimeFor == "" {
		return r, fmt.Errorf("%w: neither status, error nor time_for", ErrMalformedReply)
	}
	return r, nil
}
