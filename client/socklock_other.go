//go:build !unix

package client

import "io"

// lockSocket has no lock file where there is no flock; the socket checks alone decide.
func lockSocket(string) (io.Closer, error) { return nopCloser{}, nil }

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
