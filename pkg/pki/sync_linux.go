package pki

import "syscall"

// syncFiles makes the files just written durable with one sync(2) (Linux
// waits for it to finish), instead of one fsync per file.
func syncFiles(_ []string) error {
	syscall.Sync()
	return nil
}
