//go:build unix

package client

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRuntimeDirParent: a runtime directory is only as private as the directory that holds it.
// Whoever may rename entries there (its owner, or anyone when it is writable and not sticky) can
// swap the checked runtime directory for a symbolic link to a directory of their own after the check.
// So the fallback TMPDIR/ferry-<uid> and the daemon's runtime directory are refused when their parent
// belongs to another user, or is writable by others without the sticky bit; /tmp (root, 1777) and a
// private parent are accepted.
func TestRuntimeDirParent(t *testing.T) {
	needRoot(t) // the parents are given to another uid
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tests := []struct {
		name    string
		mode    os.FileMode
		owner   int
		wantErr string // "" = accepted
	}{
		{"private", 0o700, -1, ""},
		{"sticky and open to all, like /tmp", 0o777 | os.ModeSticky, -1, ""},
		{"another user's", 0o755, otherUID, "belongs to uid 12345"},
		{"another user's, sticky", 0o777 | os.ModeSticky, otherUID, "belongs to uid 12345"},
		{"open to all without the sticky bit", 0o777, -1, "no sticky bit"},
		{"group-writable without the sticky bit", 0o775, -1, "no sticky bit"},
	}
	for _, tc := range tests {
		parent := func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "parent")
			mkdir(t, p, tc.mode)
			if tc.owner >= 0 {
				if err := os.Chown(p, tc.owner, tc.owner); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(p, tc.mode); err != nil { // chown clears the sticky bit on some systems
				t.Fatal(err)
			}
			return p
		}
		check := func(t *testing.T, what string, err error) {
			t.Helper()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), EnvRuntimeDir) {
				t.Fatalf("%s: %v; want a refusal saying %q and what to do", what, err, tc.wantErr)
			}
		}
		t.Run("fallback/"+tc.name, func(t *testing.T) {
			tmp := parent(t)
			t.Setenv("TMPDIR", tmp)
			t.Setenv("XDG_RUNTIME_DIR", "")
			t.Setenv(EnvRuntimeDir, "")
			t.Setenv(EnvConfigDir, filepath.Join(t.TempDir(), "cfg"))
			_, err := DefaultDirs()
			check(t, "DefaultDirs", err)
			if tc.wantErr != "" {
				if _, err := os.Lstat(filepath.Join(tmp, "ferry-"+strconv.Itoa(os.Getuid()))); !os.IsNotExist(err) {
					t.Errorf("a refused runtime directory was created anyway (%v)", err)
				}
			}
		})
		t.Run("daemon/"+tc.name, func(t *testing.T) {
			d := testDaemonDirs(t)
			d.Runtime = filepath.Join(parent(t), "ferry")
			dm, err := StartDaemon(ctx, d, slog.New(slog.DiscardHandler), WithMode(ModeLoopback))
			if err == nil {
				dm.Close()
			}
			check(t, "StartDaemon", err)
		})
	}
}
