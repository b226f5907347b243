package pgserver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
)

// ErrNoBinaries is returned (wrapped) when no PostgreSQL server binaries are installed.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin or on PATH; install the PostgreSQL server (apt-get install postgresql)")

// Account is the unprivileged account PostgreSQL runs as when we are root.
type Account struct {
	Name     string
	UID, GID uint32
}

// RunAs returns the account to run initdb and postgres as: nil when not root (run as ourselves),
// else "postgres" if it exists, else "nobody".
func RunAs() (*Account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &Account{Name: name, UID: uint32(uid), GID: uint32(gid)}, nil
	}
	return nil, errors.New("running as root and found no unprivileged account (postgres or nobody) to run PostgreSQL as; create the postgres user")
}

// FindBinDir returns the directory holding initdb and postgres: the newest
// /usr/lib/postgresql/<major>/bin (Debian layout), else the directory of postgres on PATH. The
// error wraps ErrNoBinaries.
func FindBinDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return major(matches[i]) > major(matches[j]) })
	for _, m := range matches {
		if _, err := os.Stat(filepath.Join(filepath.Dir(m), "initdb")); err == nil {
			return filepath.Dir(m), nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "initdb")); err == nil {
			return filepath.Dir(p), nil
		}
	}
	return "", fmt.Errorf("find PostgreSQL: %w", ErrNoBinaries)
}

// major is the major version in a /usr/lib/postgresql/<major>/bin/postgres path (0 if none).
func major(postgresPath string) float64 {
	f, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(filepath.Dir(postgresPath))), 64)
	return f
}
