package pgtest

import (
	"errors"
	"syscall"
)

var errUnsupported = errors.New("unsupported platform")

func supported() error { return nil }

const interrupt = syscall.SIGINT
