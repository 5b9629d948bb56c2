package envelope

import "testing"

func TestTopics(t *testing.T) {
	if DataTopic("s1") != "device/s1/data" || ResponseTopic("s1") != "device/s1/response" || DataSubscription != "device/+/data" {
		t.Fatal(DataTopic("s1"), ResponseTopic("s1"), DataSubscription)
	}
	if TimeTopic("s1") != "device/s1/time" || TimeSubscription != "device/+/time" {
		t.Fatal(TimeTopic("s1"), TimeSubscription)
	}
	for topic, want := range map[string]string{
		"device/s1/data":         "s1",
		"device/sensor_001/data": "sensor_001",
		"device/a.b-c/data":      "a.b-c",
		"device/a/data/":         "",
		"device/s1/response":     "",
		"device/s1/time":         "",
		"device/a/b/data":        "",
		"devices/s1/data":        "",
		"device//data":           "",
		"device/s1/data/more":    "",
		"":                       "",
	} {
		if got := DataTopicDevice(topic); got != want {
			t.Errorf("DataTopicDevice(%q) = %q, want %q", topic, got, want)
		}
	}
	for topic, want := range map[string]string{
		"device/s1/time":         "s1",
		"device/sensor_001/time": "sensor_001",
		"device/s1/data":         "",
		"device/s1/response":     "",
		"device/a/b/time":        "",
		"device/s1/time/more":    "",
		"devices/s1/time":        "",
		"":                       "",
	} {
		if got := TimeTopicDevice(topic); got != want {
			t.Errorf("TimeTopicDevice(%q) = %q, want %q", topic, got, want)
		}
	}
}
