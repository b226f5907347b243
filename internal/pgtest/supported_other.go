//go:build !linux

package pgtest

import "errors"

var errUnsupported = errors.New("throwaway PostgreSQL servers for tests run on Linux only")

func supported() error { return errUnsupported }
