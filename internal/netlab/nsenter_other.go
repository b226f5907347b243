//go:build !linux

package netlab

import "errors"

// errNotLinux is what entering a network namespace gives off Linux: labs need Linux (New refuses
// before any host exists, so these are only reached by a caller that ignored New's error).
var errNotLinux = errors.New("netlab: network namespaces need Linux")

// Do needs Linux; elsewhere it returns an error without running fn (Here's runs fn as is).
func (h *Host) Do(fn func() error) error {
	if h.here() {
		return fn()
	}
	return errNotLinux
}

// processAlive is true off Linux, where no lab is ever made (nothing to sweep).
func processAlive(pid int) bool { return true }
