// Package version says which build of ferry or ferry-node is running: the module version and the
// VCS revision that the Go toolchain records in the binary (runtime/debug build info). Nothing is
// stamped by hand, so the answer cannot drift from the code that was built.
package version

import (
	"fmt"
	"runtime/debug"
)

// Info is what a binary knows about its own build.
type Info struct {
	// Module is the main module's version: a tag such as v1.2.3, a pseudo-version, or "(devel)"
	// for a build from a work tree.
	Module string
	// Revision is the VCS commit the binary was built from ("" when the build recorded none),
	// Time its commit time, and Modified whether the work tree had uncommitted changes.
	Revision string
	Time     string
	Modified bool
	// Go is the toolchain version.
	Go string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Module: "unknown"}
	}
	return FromBuildInfo(bi)
}

// FromBuildInfo extracts Info from build information.
func FromBuildInfo(bi *debug.BuildInfo) Info {
	in := Info{Module: bi.Main.Version, Go: bi.GoVersion}
	if in.Module == "" {
		in.Module = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.time":
			in.Time = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// String is the one line `ferry version` and `ferry-node version` print after the program name,
// e.g. "v1.2.3 (revision 0123abcd…, 2026-12-01T10:00:00Z, go1.26.8)".
func (in Info) String() string {
	s := in.Module
	rev := "revision unknown"
	if in.Revision != "" {
		rev = "revision " + in.Revision
		if in.Modified {
			rev += " with uncommitted changes"
		}
		if in.Time != "" {
			rev += ", " + in.Time
		}
	}
	if in.Go != "" {
		rev += ", " + in.Go
	}
	return fmt.Sprintf("%s (%s)", s, rev)
}
