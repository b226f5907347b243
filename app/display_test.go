package app_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/client"
)

// freeDisplay returns an X display name no server serves: one with neither a socket in
// /tmp/.X11-unix nor a lock file.
func freeDisplay(t *testing.T) string {
	t.Helper()
	for n := 400 + os.Getpid()%400; n < 1000; n++ {
		_, errSock := os.Stat(fmt.Sprintf("/tmp/.X11-unix/X%d", n))
		_, errLock := os.Stat(fmt.Sprintf("/tmp/.X%d-lock", n))
		if errors.Is(errSock, os.ErrNotExist) && errors.Is(errLock, os.ErrNotExist) {
			return fmt.Sprintf(":%d", n)
		}
	}
	t.Fatal("no free X display number between 400 and 999")
	return ""
}

// TestNoUsableDisplay runs the ferry binary without arguments where the desktop app cannot open a
// window: it must say so in one line and exit non-zero, never panic with a stack trace.
func TestNoUsableDisplay(t *testing.T) {
	bin := buildFerry(t)
	missing := freeDisplay(t)
	tests := []struct {
		name    string
		display string // "" leaves DISPLAY unset
		want    string
	}{
		{"no DISPLAY", "", "no graphical session"},
		{"DISPLAY with no X server", missing, "cannot open the display DISPLAY=" + missing},
		{"malformed DISPLAY", "not a display", "cannot open the display DISPLAY=not a display"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			home := t.TempDir()
			cmd := exec.CommandContext(ctx, bin)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "DBUS_SESSION_BUS_ADDRESS=disabled:",
				client.EnvConfigDir + "=" + filepath.Join(home, "cfg"), client.EnvRuntimeDir + "=" + filepath.Join(home, "run")}
			if tc.display != "" {
				cmd.Env = append(cmd.Env, "DISPLAY="+tc.display)
			}
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
				t.Fatalf("exit %v, want a non-zero status:\n%s", err, out)
			}
			text := strings.TrimSpace(string(out))
			if strings.Contains(text, "goroutine") || strings.Contains(text, "panic") {
				t.Fatalf("stack trace instead of a message:\n%s", text)
			}
			if lines := strings.Split(text, "\n"); len(lines) != 1 {
				t.Errorf("%d lines, want one:\n%s", len(lines), text)
			}
			if !strings.HasPrefix(text, "ferry: ") || !strings.Contains(text, tc.want) || !strings.Contains(text, "ferry daemon") {
				t.Errorf("message %q does not say %q and what to use instead", text, tc.want)
			}
		})
	}
}
