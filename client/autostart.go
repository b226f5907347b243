package client

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AutostartPath is where the XDG autostart entry for Ferry lives: $XDG_CONFIG_HOME/autostart/ferry.desktop,
// i.e. ~/.config/autostart/ferry.desktop by default (XDG Autostart Specification,
// https://specifications.freedesktop.org/autostart-spec/latest/).
func AutostartPath() (string, error) {
	base := os.Getenv("XDG_CONFIG_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find autostart directory: %w", err)
		}
		base = filepath.Join(home, ".config")
	}
	return filepath.Join(base, "autostart", "ferry.desktop"), nil
}

// AutostartEntry is the desktop entry that starts the Ferry desktop app (exe, no arguments) at login.
func AutostartEntry(exe string) string {
	return strings.Join([]string{
		"[Desktop Entry]",
		"Type=Application",
		"Name=Ferry",
		"Comment=Password-less access to Azure Database for PostgreSQL",
		"Exec=" + desktopExecQuote(exe),
		"Icon=dev.ferryhq.ferry",
		"Terminal=false",
		"X-GNOME-Autostart-enabled=true",
		"",
	}, "\n")
}

// desktopExecQuote quotes an argument of an Exec key as the Desktop Entry Specification asks.
func desktopExecQuote(s string) string {
	if !strings.ContainsAny(s, " \t\"'\\`$<>~|&;*?#()%") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\\\`, `"`, `\\"`, "`", "\\\\`", `$`, `\\$`, `%`, `%%`)
	return `"` + r.Replace(s) + `"`
}

// SetAutostart writes (on) or removes (off) the autostart entry at path for exe.
func SetAutostart(path, exe string, on bool) error {
	if !on {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("turn off start at login: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("turn on start at login: %w", err)
	}
	if err := os.WriteFile(path, []byte(AutostartEntry(exe)), 0o644); err != nil {
		return fmt.Errorf("turn on start at login: %w", err)
	}
	return nil
}

// AutostartEnabled reports whether an autostart entry exists at path.
func AutostartEnabled(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
