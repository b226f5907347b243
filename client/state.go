// Package client is the core shared by the ferry CLI and the desktop app: enrollment, the client daemon
// (tunnel to the node, loopback listeners for connected resources, the local control socket), and the
// control-socket client that the CLI and the tray app use. The GUI and the CLI hold no behaviour of
// their own beyond presenting what this package does.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/tunnel"
)

// Dirs are where the client keeps its state and its control socket.
type Dirs struct {
	Config  string // state.json (mode 0600) lives here
	Runtime string // ferry.sock lives here
}

// Environment variables that move the client's directories (used by the demo and tests).
const (
	EnvConfigDir  = "FERRY_CONFIG_DIR"
	EnvRuntimeDir = "FERRY_RUNTIME_DIR"
)

// DefaultDirs returns the directories from FERRY_CONFIG_DIR / FERRY_RUNTIME_DIR when set, else the
// user's config dir (os.UserConfigDir()/ferry) and runtime dir ($XDG_RUNTIME_DIR/ferry, or
// os.TempDir()/ferry-<uid>, which it creates and refuses unless it is the user's own with mode 0700:
// see fallbackRuntimeDir).
func DefaultDirs() (Dirs, error) {
	var d Dirs
	d.Config = os.Getenv(EnvConfigDir)
	if d.Config == "" {
		base, err := os.UserConfigDir()
		if err != nil {
			return d, fmt.Errorf("find config directory (set %s): %w", EnvConfigDir, err)
		}
		d.Config = filepath.Join(base, "ferry")
	}
	d.Runtime = os.Getenv(EnvRuntimeDir)
	if d.Runtime == "" {
		if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
			d.Runtime = filepath.Join(x, "ferry")
		} else {
			dir, err := fallbackRuntimeDir(os.TempDir(), os.Getuid())
			if err != nil {
				return d, err
			}
			d.Runtime = dir
		}
	}
	return d, nil
}

// Socket is the path of the daemon's control socket.
func (d Dirs) Socket() string { return filepath.Join(d.Runtime, "ferry.sock") }

func (d Dirs) statePath() string { return filepath.Join(d.Config, "state.json") }

// State is what the client keeps between runs. It holds the device's WireGuard private key and never
// any database credential.
type State struct {
	PrivateKey        string `json:"private_key"`
	DeviceAddress     string `json:"device_address"`
	NodePublicKey     string `json:"node_public_key"`
	WireGuardEndpoint string `json:"wireguard_endpoint"`
	NodeURL           string `json:"node_url"`
	// NodeCertSHA256 pins the enrollment endpoint's certificate (from the enrollment token) for the
	// device status query; empty in states written before it was kept.
	NodeCertSHA256 string `json:"node_cert_sha256,omitempty"`
	User           string `json:"user"`
	Admin          bool   `json:"admin"`
	VNSubnet       string `json:"vn_subnet"`
	// Connected lists the resources connected when the daemon last ran, restored at start.
	Connected []string `json:"connected,omitempty"`
	// Nodes is the deployment's node list as the control API last gave it (fleet.go), kept so that
	// a restarted daemon can fail over even when the node it enrolled with (NodePublicKey, the
	// preferred node) is down.
	Nodes []KnownNode `json:"nodes,omitempty"`
}

// ErrNotLoggedIn is returned when no state exists yet.
var ErrNotLoggedIn = errors.New("this device is not enrolled: run `ferry login TOKEN` with the token your administrator gave you")

// LoadState reads the state; it wraps ErrNotLoggedIn when there is none.
func LoadState(d Dirs) (State, error) {
	var s State
	b, err := os.ReadFile(d.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return s, ErrNotLoggedIn
	}
	if err != nil {
		return s, fmt.Errorf("read client state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("read client state %s: %w", d.statePath(), err)
	}
	return s, nil
}

// SaveState writes the state with mode 0600 (atomically).
func SaveState(d Dirs, s State) error {
	if err := os.MkdirAll(d.Config, 0o700); err != nil {
		return fmt.Errorf("write client state: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("write client state: %w", err)
	}
	tmp := d.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write client state: %w", err)
	}
	if err := os.Rename(tmp, d.statePath()); err != nil {
		return fmt.Errorf("write client state: %w", err)
	}
	return nil
}

// Login enrolls this device with the node named in token: it makes a WireGuard key pair, redeems the
// token over TLS pinned to the certificate the token names, and stores the state. It refuses to
// overwrite an existing enrollment.
func Login(ctx context.Context, d Dirs, token, deviceName string) (State, error) {
	var s State
	if _, err := LoadState(d); err == nil {
		return s, fmt.Errorf("log in: this device is already enrolled (state in %s); run `ferry logout` first", d.Config)
	}
	tok, err := api.ParseEnrollToken(token)
	if err != nil {
		return s, fmt.Errorf("log in: %w", err)
	}
	key, err := tunnel.GenerateKey()
	if err != nil {
		return s, fmt.Errorf("log in: %w", err)
	}
	if deviceName == "" {
		deviceName, _ = os.Hostname()
	}
	resp, err := api.Enroll(ctx, tok, api.EnrollRequest{Secret: tok.Secret, PublicKey: key.PublicKey().String(), DeviceName: deviceName})
	if err != nil {
		return s, fmt.Errorf("log in: %w", err)
	}
	if err := checkEnrollResponse(resp); err != nil {
		return s, fmt.Errorf("log in: %w", err)
	}
	s = State{
		PrivateKey:        key.String(),
		DeviceAddress:     resp.DeviceAddress,
		NodePublicKey:     resp.NodePublicKey,
		WireGuardEndpoint: resp.WireGuardEndpoint,
		NodeURL:           tok.URL,
		NodeCertSHA256:    tok.CertSHA256,
		User:              resp.User,
		Admin:             resp.Admin,
		VNSubnet:          resp.VNSubnet,
	}
	if err := SaveState(d, s); err != nil {
		return s, fmt.Errorf("log in: %w", err)
	}
	return s, nil
}

// checkEnrollResponse refuses an enrollment answer that the CLI and the app would print or use as
// they are: the node a token names is whoever made the token, and its user name is shown in
// terminals (a control character there is an escape sequence) and its device address is used.
func checkEnrollResponse(r api.EnrollResponse) error {
	if r.User == "" || strings.IndexFunc(r.User, func(c rune) bool { return !unicode.IsPrint(c) }) >= 0 {
		return fmt.Errorf("the node answered with an unusable user name %q", r.User)
	}
	if a, err := netip.ParseAddr(r.DeviceAddress); err != nil || !api.TunnelSubnet.Contains(a) {
		return fmt.Errorf("the node answered with a device address %q outside %s", r.DeviceAddress, api.TunnelSubnet)
	}
	return nil
}
