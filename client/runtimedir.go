package client

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// The runtime directory holds the control socket: whoever can put a socket there can pose as the
// daemon to the CLI and the desktop app (and see the admin commands they send), and whoever can
// connect to the daemon's socket can drive it. So the directory must be the user's own and closed to
// everyone else, and a socket in it is used only when the user (or root) owns it.

// fallbackRuntimeDir returns tmp/ferry-<uid>, the runtime directory when XDG_RUNTIME_DIR is unset.
// tmp is shared with every local user, who may have made that name first: the directory is created
// exclusively (Mkdir, not MkdirAll), and then, whether this call made it or an earlier run did, it
// must be a real directory (not a symbolic link) owned by the user with mode 0700. Anything else is
// refused with what to do.
func fallbackRuntimeDir(tmp string, uid int) (string, error) {
	dir := filepath.Join(tmp, "ferry-"+strconv.Itoa(uid))
	if err := checkParentDir(dir); err != nil {
		return "", err
	}
	err := os.Mkdir(dir, 0o700)
	switch {
	case err == nil:
		// The umask may have taken more than group and other bits; the directory is new and ours.
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", fmt.Errorf("create runtime directory %s: %w", dir, err)
		}
	case !errors.Is(err, fs.ErrExist):
		return "", fmt.Errorf("create runtime directory %s (or set XDG_RUNTIME_DIR or %s): %w", dir, EnvRuntimeDir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("check runtime directory %s: %w", dir, err)
	}
	refuse := func(why string) (string, error) {
		return "", fmt.Errorf("refusing to use the runtime directory %s: %s; another local user may have created it to intercept Ferry's control socket. Remove it (as root if you cannot: rm -rf %s) and try again, or set XDG_RUNTIME_DIR or %s to a directory only you can write", dir, why, dir, EnvRuntimeDir)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return refuse("it is a symbolic link")
	case !fi.IsDir():
		return refuse("it is not a directory")
	}
	if owner, ok := fileOwner(fi); ok {
		if me := myUID(); owner != me {
			return refuse(fmt.Sprintf("it is owned by uid %d, not by you (uid %d)", owner, me))
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			return refuse(fmt.Sprintf("its mode is %#o, not 0700", perm))
		}
	}
	return dir, nil
}

// checkRuntimeDir is what the daemon requires of any runtime directory before it puts its socket
// there: a real directory owned by the user that no one else may write (so no one can plant or swap
// the socket).
func checkRuntimeDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check runtime directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir() {
		return fmt.Errorf("refusing to use the runtime directory %s: it is %s, not a directory; set %s to a directory only you can write", dir, kind(fi), EnvRuntimeDir)
	}
	owner, ok := fileOwner(fi)
	if !ok {
		return nil
	}
	if me := myUID(); owner != me {
		return fmt.Errorf("refusing to use the runtime directory %s: it is owned by uid %d, not by you (uid %d); set %s to a directory only you can write", dir, owner, me, EnvRuntimeDir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("refusing to use the runtime directory %s: its mode %#o lets other users write there; run `chmod 700 %s` or set %s to a directory only you can write", dir, perm, dir, EnvRuntimeDir)
	}
	return checkParentDir(dir)
}

// checkParentDir refuses a runtime directory whose parent lets another user rename or remove it:
// whoever can do that can swap the checked directory for a symbolic link to one of their own at any
// time after the check, and the socket would be made or dialled there. The parent must belong to the
// user or root, and be closed to group and other writes unless it has the sticky bit (as /tmp has:
// then only an entry's owner may rename it).
func checkParentDir(dir string) error {
	parent := filepath.Dir(dir)
	fi, err := os.Stat(parent)
	if err != nil {
		return fmt.Errorf("check the directory holding the runtime directory %s: %w", dir, err)
	}
	owner, ok := fileOwner(fi)
	if !ok {
		return nil
	}
	why := ""
	switch me := myUID(); {
	case owner != me && owner != 0:
		why = fmt.Sprintf("it belongs to uid %d, not to you (uid %d) or root", owner, me)
	case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0:
		why = fmt.Sprintf("its mode %#o lets other users write there and it has no sticky bit", fi.Mode().Perm())
	default:
		return nil
	}
	return fmt.Errorf("refusing to use the runtime directory %s: %s holds it and %s, so another user could replace it with their own. Set XDG_RUNTIME_DIR or %s to a directory only you can write (or TMPDIR to one with the sticky bit)", dir, parent, why, EnvRuntimeDir)
}

// errNoSocket says there is no control socket: no daemon runs.
var errNoSocket = errors.New("no control socket")

// checkSocket returns nil when path is a socket owned by the user or by root, which alone may be
// trusted to be a ferry daemon; errNoSocket (wrapped) when there is nothing at path; otherwise an
// error that says what to do. A socket that another user planted is never dialled.
func checkSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w at %s", errNoSocket, path)
	}
	if err != nil {
		return fmt.Errorf("check control socket: %w", err)
	}
	owner, ok := fileOwner(fi)
	if !ok {
		return nil // no uids here (Windows): the runtime directory is the user's own
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("refusing to use %s as the ferry daemon's control socket: it is %s, not a socket; remove it and start `ferry daemon` again", path, kind(fi))
	}
	if me := myUID(); owner != me && owner != 0 {
		return fmt.Errorf("refusing to use the control socket %s: it belongs to uid %d, not to you (uid %d) or root, so it may be another user's program posing as the ferry daemon. Remove it (as root if you cannot), start `ferry daemon` again, and keep the runtime directory private (XDG_RUNTIME_DIR or %s)", path, owner, me, EnvRuntimeDir)
	}
	return nil
}

// kind names the type of file fi describes, for error messages.
func kind(fi fs.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t&fs.ModeSymlink != 0:
		return "a symbolic link"
	case t&fs.ModeSocket != 0:
		return "a socket"
	case fi.IsDir():
		return "a directory"
	case t == 0:
		return "a regular file"
	default:
		return "a special file"
	}
}

// removeOwnSocket removes the socket at path if it is the user's own; when mine is not nil, only if
// it is still that very file (not one that replaced it since). Someone else's file is left alone.
func removeOwnSocket(path string, mine os.FileInfo) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove control socket: %w", err)
	}
	if mine != nil && !os.SameFile(fi, mine) {
		return fmt.Errorf("not removing %s: it is no longer the socket this daemon made", path)
	}
	if owner, ok := fileOwner(fi); ok {
		if owner != myUID() {
			return fmt.Errorf("not removing %s: it belongs to uid %d, not to you (uid %d)", path, owner, myUID())
		}
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("not removing %s: it is %s, not a socket", path, kind(fi))
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove control socket: %w", err)
	}
	return nil
}

// checkPeer closes c and returns an error when the process at its other end runs as neither the
// user nor root (where the OS tells: SO_PEERCRED on Linux). It backs up checkSocket against a socket
// swapped between the check and the connect.
func checkPeer(c net.Conn, path string) error {
	uid, ok := socketPeerUID(c)
	if !ok || uid == myUID() || uid == 0 {
		return nil
	}
	_ = c.Close()
	return fmt.Errorf("refusing the control socket %s: the program serving it runs as uid %d, not as you (uid %d) or root, so it may be another user's program posing as the ferry daemon; stop it, start `ferry daemon` again, and keep the runtime directory private (XDG_RUNTIME_DIR or %s)", path, uid, myUID(), EnvRuntimeDir)
}

// ownerOnly is the daemon's control socket listener: it closes connections from processes that run
// as neither the user nor root. The socket is 0600 in a private directory already; this holds even
// if someone loosened them.
type ownerOnly struct {
	net.Listener
	log *slog.Logger
}

func (l ownerOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if uid, ok := socketPeerUID(c); ok && uid != myUID() && uid != 0 {
			l.log.Warn("refused a control socket connection from another user", "uid", uid)
			_ = c.Close()
			continue
		}
		return c, nil
	}
}
