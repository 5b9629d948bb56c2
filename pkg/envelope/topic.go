package envelope

import "strings"

// The topic grammar, in one place: a device publishes on
// device/<id>/data and reads its replies on device/<id>/response, where
// <id> is its certificate's CN (the broker's ACL holds each device to its
// own two topics: mosquitto/acl).
const (
	topicPrefix    = "device/"
	dataSuffix     = "/data"
	responseSuffix = "/response"
	// DataSubscription is the gateway's subscription to every device's
	// uplink.
	DataSubscription = topicPrefix + "+" + dataSuffix
)

// DataTopic returns the topic device id publishes its messages on.
func DataTopic(id string) string { return topicPrefix + id + dataSuffix }

// ResponseTopic returns the topic device id reads its replies on.
func ResponseTopic(id string) string { return topicPrefix + id + responseSuffix }

// DataTopicDevice returns <id> of device/<id>/data, or "" for a topic of
// another shape (the identity check then fails: no device has id "").
func DataTopicDevice(topic string) string {
	rest, ok := strings.CutPrefix(topic, topicPrefix)
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, dataSuffix)
	if !ok || strings.Contains(id, "/") {
		return ""
	}
	return id
}
