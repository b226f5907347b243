package pgserver

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestFindBinDir: the directory found holds both initdb and postgres; without binaries the error
// wraps ErrNoBinaries and says what to install.
func TestFindBinDir(t *testing.T) {
	dir, err := FindBinDir()
	if errors.Is(err, ErrNoBinaries) {
		t.Skipf("no PostgreSQL installed: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s in %s: %v", name, dir, err)
		}
	}
}

// TestMajor: the newest major version sorts first, 9.6 below 15.
func TestMajor(t *testing.T) {
	for _, tc := range []struct {
		path string
		want float64
	}{
		{"/usr/lib/postgresql/15/bin/postgres", 15},
		{"/usr/lib/postgresql/9.6/bin/postgres", 9.6},
		{"/usr/local/bin/postgres", 0},
	} {
		if got := major(tc.path); got != tc.want {
			t.Errorf("major(%s) = %v, want %v", tc.path, got, tc.want)
		}
	}
}
