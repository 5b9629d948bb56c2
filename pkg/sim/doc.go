// Package sim plays devices against a running broker and gateway, over
// real MQTT with mutual TLS: Demo sends valid readings and then one attack
// at a time and prints a verdict table (the rows of docs/DEMO.md); Load
// has many devices publish signed QoS 1 messages and summarizes the
// throughput, the replies and their round trip (LoadSummary, which
// test/perf reads).
//
// It stands outside the pipeline, on the devices' side of the broker:
// every simulated device connects through pkg/device with its own
// certificate and signs with its own secret. It knows nothing of the
// gateway's packages; where the secrets come from (a registry, a file) is
// the caller's choice (Options.Secrets).
package sim
