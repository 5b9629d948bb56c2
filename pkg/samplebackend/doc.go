// Package samplebackend is the sample HTTP backend behind "iotgw backend":
// it stands at the far end of the pipeline, where the application's
// backend would, for the demo and the end-to-end tests. It records what
// the gateway forwards (one JSON line per request), counts deliveries and
// duplicates (GET /stats), answers batch mode (POST /batch), simulates
// outages (--fail-for, POST /fail) and checks backend trust as a real
// backend should: the bearer token and the request signature
// (package backendsig) on every request, the control endpoints included.
package samplebackend
