package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/iotgw/iotgw/pkg/pki"
)

// deviceCSR is device add's --csr: a certificate signing request made on
// the device, checked before the device is registered and signed, by the
// CA in --certs, right after.
type deviceCSR struct {
	path string
	days int
	pem  []byte
}

func (c *deviceCSR) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.path, "csr", "", "sign the device's client certificate from this CSR (PEM, CN = the device id) with the CA in --certs")
	addDaysFlag(fs, &c.days)
}

// set reports whether --csr was given.
func (c *deviceCSR) set() bool { return c.path != "" }

// check reads the CSR and checks it for id, and that certsDir has a CA and
// no certificate for id yet, so that a device is never registered whose
// certificate would then be refused.
func (c *deviceCSR) check(id, certsDir string) error {
	if c.days < 1 || c.days > pki.MaxCSRDays {
		return usagef("--days: %v (got %d)", pki.ErrBadValidity, c.days)
	}
	b, err := pki.ReadCSR(c.path)
	if err != nil {
		return csrUsage(err)
	}
	if _, _, err := pki.CheckCSR(b, id); err != nil {
		return csrUsage(fmt.Errorf("%s: %w", c.path, err))
	}
	crt, key := pki.DeviceCert(certsDir, id)
	for _, p := range []string{crt, key} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists; remove it or use another device id", p)
		}
	}
	if _, err := os.Stat(pki.Paths(certsDir).CACert); err != nil {
		return fmt.Errorf("no CA in %s (run: iotgw pki init --dir %s)", certsDir, certsDir)
	}
	c.pem = b
	return nil
}

// sign signs the checked CSR for id.
func (c *deviceCSR) sign(id, certsDir string) (pki.Issued, error) {
	return pki.SignCSR(certsDir, id, c.pem, c.days, time.Now())
}
