package pgtest

import "errors"

var errUnsupported = errors.New("unsupported platform")

func supported() error { return nil }
