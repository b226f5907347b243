package node

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// State directory modes. The directory holds the WireGuard and TLS private keys and the catalog and
// audit database (every user, device and statement), so only the node's own user may enter it.
// systemd's StateDirectory= makes it 0755 unless StateDirectoryMode= says otherwise, and an
// administrator's mkdir honours the umask: the node tightens both at init and at every start.
const (
	stateDirMode  fs.FileMode = 0o700
	stateFileMode fs.FileMode = 0o600
)

// privateStateFiles are the files in the state directory that only the node's user may read. The
// enrollment certificate (enroll.crt) is public: every token pins it.
var privateStateFiles = []string{keyFile, certKeyFile, ConfigFile, nodeFile, dbFile, dbFile + "-wal", dbFile + "-shm", dbFile + "-journal"}

// secureStateDir makes dir 0700 and its private files 0600, logging what was
// looser. Files that do not exist yet are skipped (the database's -wal and -shm are created by SQLite
// with the main file's mode, see audit.OpenDB). A symbolic link among the private files is left
// alone and reported: chmod would change its target instead.
func secureStateDir(dir string, log *slog.Logger) error {
	if err := checkStateDirOwner(dir); err != nil {
		return err
	}
	if err := tighten(dir, stateDirMode, log, "state directory"); err != nil {
		return err
	}
	for _, f := range privateStateFiles {
		if err := tighten(filepath.Join(dir, f), stateFileMode, log, "state file"); err != nil {
			return err
		}
	}
	return nil
}

// tighten removes from path's permissions every bit that mode does not have, and logs when it did.
func tighten(path string, mode fs.FileMode, log *slog.Logger, what string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check %s %s: %w", what, path, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if what == "state directory" {
			if fi, err = os.Stat(path); err != nil { // a symlinked state dir (systemd DynamicUser=) is fine
				return fmt.Errorf("check %s %s: %w", what, path, err)
			}
		} else {
			log.Warn("state file is a symbolic link: its permissions are not checked; keep the node's files in its state directory", "path", path)
			return nil
		}
	}
	old := fi.Mode().Perm()
	if old&^mode == 0 {
		return nil
	}
	if err := os.Chmod(path, old&mode); err != nil {
		return fmt.Errorf("restrict %s %s to mode %#o (run ferry-node as the directory's owner): %w", what, path, mode, err)
	}
	log.Warn(what+" was accessible to other users: restricted it", "path", path, "was", fmt.Sprintf("%#o", old), "now", fmt.Sprintf("%#o", old&mode))
	return nil
}

// checkStateDirEmpty refuses a directory that holds anything but a node's own files (left by a
// failed init) or a file system's lost+found: init makes the directory 0700, which must never
// happen to a shared directory given by mistake (--state /tmp, --state /var/lib).
func checkStateDirEmpty(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read state directory: %w", err)
	}
	own := map[string]bool{certFile: true, "lost+found": true}
	for _, f := range privateStateFiles {
		own[f] = true
	}
	for _, e := range entries {
		if !own[e.Name()] {
			return fmt.Errorf("%s is not empty (it holds %s): give a new or empty directory for the node's state", dir, e.Name())
		}
	}
	return nil
}

// checkStateDirOwner refuses a state directory that belongs to another user than the node's (root
// aside): its owner may rename and replace the keys, the config and the database at will, and can
// open the directory again after any chmod.
func checkStateDirOwner(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("check state directory %s: %w", dir, err)
	}
	owner, ok := fileOwner(fi)
	if me := os.Geteuid(); ok && owner != me && owner != 0 {
		return fmt.Errorf("state directory %s is owned by uid %d, not by the user ferry-node runs as (uid %d): another user could replace the node's keys and database; give a directory of the node's user (chown it, or run ferry-node as its owner)", dir, owner, me)
	}
	return nil
}

// checkStateDirEntries refuses, at init once the directory is private, any entry another user may
// have planted while it was open: a symbolic link (init would write the key, the config or the
// database through it, to wherever it points) or a file another user owns.
func checkStateDirEntries(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read state directory: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("check state directory: %w", err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symbolic link: remove it (someone may have planted it to have init write the node's files elsewhere) and run init again", p)
		}
		if owner, ok := fileOwner(fi); ok && owner != os.Geteuid() && owner != 0 {
			return fmt.Errorf("%s belongs to uid %d, not to the user ferry-node runs as: remove it and run init again", p, owner)
		}
	}
	return nil
}
