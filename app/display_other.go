//go:build cgo && !((linux || freebsd || netbsd || openbsd) && !wayland)

package app

// checkDisplay has nothing to check on systems whose toolkit backend is not X11 (macOS, Windows,
// Wayland builds): their backends report failures the toolkit handles itself.
func checkDisplay() error { return nil }
