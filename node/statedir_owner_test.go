//go:build unix

package node_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node"
)

// attackerUID is another local user of the node's machine.
const attackerUID = 12345

// TestStateDirOtherUsersFiles: a state directory that another local user owns, or in which another
// user planted an entry while it was open (a symbolic link named like a node file, pointing at a file
// of the node's user), is refused by init before anything is written through it, and a node's
// directory that another user owns is refused at start: that user could swap the keys, the config
// or the database at will.
func TestStateDirOtherUsersFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another uid")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tests := []struct {
		name    string
		owner   int             // of the state directory
		plant   map[string]bool // node file names planted as symlinks to the victim file (true: owned by the attacker)
		wantErr string
	}{
		{"another user's directory", attackerUID, nil, "owned by uid 12345"},
		{"another user's directory with a planted config", attackerUID, map[string]bool{node.ConfigFile: true}, "owned by uid 12345"},
		{"open directory, config planted by another user", 0, map[string]bool{node.ConfigFile: true}, "config.json"},
		{"open directory, database planted by another user", 0, map[string]bool{"ferry.db": true}, "ferry.db"},
		{"open directory, a symlink of our own", 0, map[string]bool{node.ConfigFile: false}, "symbolic link"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			victim := filepath.Join(root, "victim")
			if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(root, "state")
			mkdirMode(t, dir, 0o777)
			for name, theirs := range tc.plant {
				p := filepath.Join(dir, name)
				if err := os.Symlink(victim, p); err != nil {
					t.Fatal(err)
				}
				if theirs {
					if err := os.Lchown(p, attackerUID, attackerUID); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := os.Chown(dir, tc.owner, tc.owner); err != nil {
				t.Fatal(err)
			}
			_, err := node.Init(ctx, dir, loopbackNodeConfig(), "")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Init: %v, want a refusal saying %q", err, tc.wantErr)
			}
			if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
				t.Errorf("the file a planted symlink points at was overwritten: %q", b)
			}
			if _, err := os.Lstat(filepath.Join(dir, "wireguard.key")); err == nil {
				t.Errorf("init wrote the node's key into the refused directory")
			}
		})
	}
	t.Run("start in a directory another user owns", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		cfg := loopbackNodeConfig()
		if _, err := node.Init(ctx, dir, cfg, ""); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, attackerUID, attackerUID); err != nil {
			t.Fatal(err)
		}
		n, err := node.Start(ctx, dir, cfg, slog.New(slog.DiscardHandler))
		if err == nil {
			n.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "owned by uid 12345") {
			t.Errorf("Start: %v, want a refusal naming the directory's owner", err)
		}
	})
}

// mkdirMode makes directory p with exactly mode, past the umask.
func mkdirMode(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}
