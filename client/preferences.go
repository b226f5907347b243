package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferryhq/ferry/resource"
)

// Preferences are this user's local choices, kept in preferences.json beside the state.
type Preferences struct {
	// ConnectivityMode is the mode the app's client serves every resource in (WithMode):
	// resource.ModeLoopback or resource.ModeVirtualNetworking; "" serves each resource in its own
	// mode, the org's default for one that has none.
	ConnectivityMode string `json:"connectivity_mode,omitempty"`
}

func (d Dirs) preferencesPath() string { return filepath.Join(d.Config, "preferences.json") }

// LoadPreferences reads the preferences; none stored gives the zero value.
func LoadPreferences(d Dirs) (Preferences, error) {
	var p Preferences
	b, err := os.ReadFile(d.preferencesPath())
	if errors.Is(err, os.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read preferences: %w", err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("read preferences %s: %w", d.preferencesPath(), err)
	}
	return p, nil
}

// SavePreferences checks and writes the preferences.
func SavePreferences(d Dirs, p Preferences) error {
	switch p.ConnectivityMode {
	case "", resource.ModeLoopback, resource.ModeVirtualNetworking:
	default:
		return fmt.Errorf("save preferences: unknown connectivity mode %q (use %s or %s)", p.ConnectivityMode, resource.ModeLoopback, resource.ModeVirtualNetworking)
	}
	if err := os.MkdirAll(d.Config, 0o700); err != nil {
		return fmt.Errorf("save preferences: %w", err)
	}
	b, _ := json.MarshalIndent(p, "", "  ")
	if err := os.WriteFile(d.preferencesPath(), b, 0o600); err != nil {
		return fmt.Errorf("save preferences: %w", err)
	}
	return nil
}
