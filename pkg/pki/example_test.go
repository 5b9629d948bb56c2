package pki_test

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
)

func ExampleInit() {
	tmp, err := os.MkdirTemp("", "pki-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "certs")

	if err := pki.Init(dir, []string{"mqtt.example.com"}, time.Now()); err != nil {
		panic(err)
	}
	for _, f := range pki.Paths(dir).All() {
		fmt.Println(filepath.Base(f))
	}
	// Output:
	// ca.key
	// ca.crt
	// broker.key
	// broker.crt
	// gateway.key
	// gateway.crt
	// crl.pem
}

func ExampleIssue() {
	tmp, err := os.MkdirTemp("", "pki-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(tmp)

	if err := pki.Init(tmp, nil, time.Now()); err != nil {
		panic(err)
	}
	if err := pki.Issue(tmp, "sensor-1", time.Now()); err != nil {
		panic(err)
	}
	crt, key := pki.DeviceCert(tmp, "sensor-1")
	fmt.Println(filepath.Rel(tmp, crt))
	fmt.Println(filepath.Rel(tmp, key))
	fmt.Println(pki.Issue(tmp, "bad id", time.Now()))
	// Output:
	// devices/sensor-1.crt <nil>
	// devices/sensor-1.key <nil>
	// issue device certificate "bad id": device id must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot
}
