//go:build cgo && (linux || freebsd || netbsd || openbsd) && !wayland

package app

/*
#cgo LDFLAGS: -lX11
#include <stdlib.h>
#include <X11/Xlib.h>

static int ferry_display_opens(const char *name) {
	Display *d = XOpenDisplay(name);
	if (d == NULL) {
		return 0;
	}
	XCloseDisplay(d);
	return 1;
}
*/
import "C"

import (
	"fmt"
	"os"
	"unsafe"
)

// checkDisplay opens and closes a connection to the X server named by DISPLAY, as the toolkit's GLFW
// (X11 backend) does first. GLFW only logs that failure and the toolkit then panics on its first
// window ("The GLFW library is not initialized"), so the app asks first and can say what is wrong.
func checkDisplay() error {
	name := os.Getenv("DISPLAY")
	if name == "" {
		return nil // Run has said already that there is no graphical session
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if C.ferry_display_opens(cname) == 0 {
		return fmt.Errorf("the desktop app cannot open the display DISPLAY=%s (no X server answers there, or it refuses this user), so use `ferry daemon` and the commands instead (ferry --help), or set DISPLAY to a running X server", name)
	}
	return nil
}
