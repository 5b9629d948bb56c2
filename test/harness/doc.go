// Package harness starts the real processes that iotgw's end-to-end tests
// run against: a Mosquitto broker configured from the project's own
// mosquitto/mosquitto.conf and mosquitto/acl, a PKI made with pkg/pki, MQTT
// clients that connect with mutual TLS, and the iotgw binary.
//
// Every helper takes a testing.TB, fails the test (never skips it) when
// something it needs is missing, and registers its own cleanup, so a test
// reads as a list of the processes it needs:
//
//	certs := harness.PKI(t)
//	harness.IssueDevice(t, certs, "sensor-1")
//	broker := harness.StartMosquitto(t, certs)
//	dev := harness.NewDeviceClient(t, broker, certs, "sensor-1")
//
// The broker's log is written to a file and printed when the test fails.
// Set HARNESS_MOSQUITTO_DEBUG=1 to make Mosquitto log everything, denied
// publishes and subscriptions included.
package harness
