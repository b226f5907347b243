//go:build unix

package node_test

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// looseUmask sets the process umask to 0 for the test, so that whatever the code does not restrict
// itself ends up world-readable (as under an administrator's or a service manager's umask).
func looseUmask(t *testing.T) {
	t.Helper()
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
}

// loopbackNodeConfig is a node config that listens on loopback only and asks no real DNS.
func loopbackNodeConfig() node.Config {
	return node.Config{PublicHost: "127.0.0.1", EnrollListen: "127.0.0.1:0", DNSServer: "127.0.0.1:9"}
}

// wantModes fails the test for every path (relative to dir) whose permissions are not want; missing
// paths fail too unless optional.
func wantModes(t *testing.T, dir string, want fs.FileMode, optional bool, paths ...string) {
	t.Helper()
	for _, p := range paths {
		fi, err := os.Stat(filepath.Join(dir, p))
		if optional && os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %#o, want %#o", p, got, want)
		}
	}
}

// TestStateDirPermissions: the node's state directory ends up 0700 and its keys, config and database
// files 0600, at init and at every start, whatever they were before (systemd's StateDirectory= makes
// the directory 0755; the umask here is 0), and the start logs what it restricted. The database's
// -wal and -shm files, which SQLite creates itself while the node runs, are 0600 too.
func TestStateDirPermissions(t *testing.T) {
	looseUmask(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil { // as systemd's StateDirectory= leaves it
		t.Fatal(err)
	}
	if _, err := node.Init(ctx, dir, loopbackNodeConfig(), ""); err != nil {
		t.Fatal(err)
	}
	wantModes(t, dir, 0o700, false, ".")
	wantModes(t, dir, 0o600, false, "wireguard.key", "enroll.key", "config.json", "ferry.db")
	wantModes(t, dir, 0o600, true, "ferry.db-wal", "ferry.db-shm")

	// Loosened between runs (a restore from backup, a service manager, an administrator's chmod).
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"wireguard.key", "enroll.key", "config.json", "ferry.db"} {
		if err := os.Chmod(filepath.Join(dir, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var logs syncBuffer
	n, err := node.Start(ctx, dir, loopbackNodeConfig(), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Catalog().AddUser(ctx, "writer", false); err != nil { // a write: the WAL is in use
		t.Fatal(err)
	}
	wantModes(t, dir, 0o700, false, ".")
	wantModes(t, dir, 0o600, false, "wireguard.key", "enroll.key", "config.json", "ferry.db", "ferry.db-wal", "ferry.db-shm")
	for _, want := range []string{"state directory was accessible to other users", "state file was accessible to other users", "wireguard.key", `was=0755`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("start log lacks %q:\n%s", want, logs.String())
		}
	}
}

// TestInitRefusesSharedDir: init restricts its directory to 0700, so it refuses one that holds
// anything else (a shared directory given by mistake, --state /tmp) and leaves it as it was.
func TestInitRefusesSharedDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "someone-elses"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := node.Init(ctx, dir, loopbackNodeConfig(), "")
	if err == nil || !strings.Contains(err.Error(), "is not empty (it holds someone-elses)") {
		t.Fatalf("Init in a shared directory: %v, want a refusal", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&(fs.ModePerm|fs.ModeSticky) != 0o777|fs.ModeSticky {
		t.Errorf("the shared directory's mode became %v", fi.Mode())
	}
}
