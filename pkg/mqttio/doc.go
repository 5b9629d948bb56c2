// Package mqttio is the Paho adapter: it connects to the broker over mutual
// TLS with a persistent session, subscribes to device uplinks (and time
// requests), hands each
// message to a Handler with a manual Ack, and publishes replies. It knows
// nothing of validation.
//
// It is the first and last stage of the pipeline. Acks are manual
// (SetAutoAckDisabled): a message is acked only when the gateway says its
// outcome is durable, so after a crash or a lost connection the broker
// redelivers it (MQTT 3.1.1 §4.4, clean_session=false). Every unacked
// message holds one of the broker's in-flight slots for this session, which
// is the gateway's backpressure.
package mqttio
