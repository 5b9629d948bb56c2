package envelope

import "strings"

// The topic grammar, in one place: a device publishes its messages on
// device/<id>/data, asks for the time on device/<id>/time (section 4c of
// docs/PROTOCOL.md) and reads its replies on device/<id>/response, where
// <id> is its certificate's CN (the broker's ACL holds each device to its
// own topics: mosquitto/acl).
const (
	topicPrefix    = "device/"
	dataSuffix     = "/data"
	timeSuffix     = "/time"
	responseSuffix = "/response"
	// DataSubscription is the gateway's subscription to every device's
	// uplink.
	DataSubscription = topicPrefix + "+" + dataSuffix
	// TimeSubscription is the gateway's subscription to every device's
	// time requests.
	TimeSubscription = topicPrefix + "+" + timeSuffix
)

// DataTopic returns the topic device id publishes its messages on.
func DataTopic(id string) string { return topicPrefix + id + dataSuffix }

// TimeTopic returns the topic device id publishes its time requests on.
func TimeTopic(id string) string { return topicPrefix + id + timeSuffix }

// ResponseTopic returns the topic device id reads its replies on.
func ResponseTopic(id string) string { return topicPrefix + id + responseSuffix }

// DataTopicDevice returns <id> of device/<id>/data, or "" for a topic of
// another shape (the identity check then fails: no device has id "").
func DataTopicDevice(topic string) string { return topicDevice(topic, dataSuffix) }

// TimeTopicDevice returns <id> of device/<id>/time, or "" for a topic of
// another shape.
func TimeTopicDevice(topic string) string { return topicDevice(topic, timeSuffix) }

func topicDevice(topic, suffix string) string {
	rest, ok := strings.CutPrefix(topic, topicPrefix)
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, suffix)
	if !ok || strings.Contains(id, "/") {
		return ""
	}
	return id
}
