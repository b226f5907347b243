// Package tunnel runs a WireGuard interface in userspace on both ends of Ferry: wireguard-go's
// device over a UDP socket, with a netstack.Stack (gVisor) as its "TUN" so no root or OS
// interface is needed. The node runs it with a fixed listen port and a promiscuous stack (it
// terminates TCP for any virtual-networking address); clients run it with an ephemeral port and
// the node as their only peer.
//
// wireguard-go is configured through its configuration protocol (UAPI, "set=1"/"get=1" key=value
// lines, https://www.wireguard.com/xplatform/#configuration-protocol).
package tunnel

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"github.com/ferryhq/ferry/netstack"
)

// ErrPeerNotFound is returned by RemovePeer for a public key that is not a peer.
var ErrPeerNotFound = errors.New("peer not found")

// Peer is one WireGuard peer: who may talk to us (PublicKey), from and to which inner addresses
// (AllowedIPs, also the routing table for outbound packets), where to send (Endpoint) and how
// often to send a keepalive to hold NAT mappings open (PersistentKeepalive, whole seconds,
// 0 = off; wg(8) suggests 25 s behind NAT).
type Peer struct {
	PublicKey           Key
	AllowedIPs          []netip.Prefix
	Endpoint            netip.AddrPort // zero = none: wait for the peer to reach us (or keep the current one)
	PersistentKeepalive time.Duration
}

// Config describes a tunnel interface.
type Config struct {
	PrivateKey  Key
	ListenPort  int // UDP; 0 = ephemeral (clients)
	Addresses   []netip.Addr
	MTU         int // bytes; 0 = netstack.DefaultMTU (1420)
	Promiscuous bool
	Peers       []Peer
	Logger      *slog.Logger // wireguard-go's logs go here at debug level; nil = discard
	// Keepalive configures TCP keepalive on the stack's connections (zero fields: netstack's
	// defaults, which declare a silent peer dead after about 2 minutes).
	Keepalive Keepalive
}

// Keepalive is TCP keepalive for connections inside the tunnel: after Idle without traffic a probe
// is sent every Interval, and the connection is reset after Count unanswered probes, so a peer
// that vanished without a FIN or RST is detected after Idle + Count × Interval. UserTimeout (0 =
// off) resets a connection whose sent data stays unacknowledged that long, which covers a peer
// that vanished with data in flight (keepalive probes only idle connections).
type Keepalive struct {
	Idle, Interval time.Duration
	Count          int
	UserTimeout    time.Duration
}

// KeepaliveWithin returns the keepalive that detects a silent peer after about d: idle d/2, then
// 4 probes d/8 apart, and unacknowledged data for d.
func KeepaliveWithin(d time.Duration) Keepalive {
	return Keepalive{Idle: d / 2, Interval: d / 8, Count: 4, UserTimeout: d}
}

// PeerStatus is a peer's state as reported by wireguard-go.
type PeerStatus struct {
	PublicKey     Key
	Endpoint      string    // "ip:port" last seen or configured; "" if none
	LastHandshake time.Time // zero if no handshake has completed
	RxBytes       uint64
	TxBytes       uint64
}

// Tunnel is a running WireGuard interface with its userspace network stack.
type Tunnel struct {
	dev   *device.Device
	stack *netstack.Stack
	self  Key // our public key
	priv  *ecdh.PrivateKey
	port  uint16
	log   *slog.Logger
	once  sync.Once
}

// New starts a tunnel: it builds the network stack, configures wireguard-go with cfg and brings
// the device up (binding the UDP port). ctx only gates the start; the tunnel lives until Close.
func New(ctx context.Context, cfg Config) (*Tunnel, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tunnel: start: %w", err)
	}
	if cfg.PrivateKey.IsZero() {
		return nil, errors.New("tunnel: config: private key is not set")
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > math.MaxUint16 {
		return nil, fmt.Errorf("tunnel: config: listen port %d out of range 0..65535", cfg.ListenPort)
	}
	self := cfg.PrivateKey.PublicKey()
	priv, err := ecdh.X25519().NewPrivateKey(cfg.PrivateKey[:])
	if err != nil {
		return nil, fmt.Errorf("tunnel: config: private key: %w", err)
	}
	var uapi strings.Builder
	fmt.Fprintf(&uapi, "private_key=%s\nlisten_port=%d\nreplace_peers=true\n", cfg.PrivateKey.hex(), cfg.ListenPort)
	for i, p := range cfg.Peers {
		if err := writePeer(&uapi, p, priv, self); err != nil {
			return nil, fmt.Errorf("tunnel: config: peer %d: %w", i, err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stk, err := netstack.New(netstack.Config{Addresses: cfg.Addresses, MTU: cfg.MTU, Promiscuous: cfg.Promiscuous,
		KeepaliveIdle: cfg.Keepalive.Idle, KeepaliveInterval: cfg.Keepalive.Interval, KeepaliveCount: cfg.Keepalive.Count,
		UserTimeout: cfg.Keepalive.UserTimeout})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	t := &Tunnel{stack: stk, self: self, priv: priv, log: log}
	t.dev = device.NewDevice(stk.Device(), conn.NewDefaultBind(), deviceLogger(log))
	if err := t.dev.IpcSet(uapi.String()); err != nil {
		t.Close()
		return nil, fmt.Errorf("tunnel: configure wireguard: %w", err)
	}
	if err := t.dev.Up(); err != nil {
		t.Close()
		return nil, fmt.Errorf("tunnel: bring wireguard up: %w", err)
	}
	port, err := t.listenPort()
	if err != nil {
		t.Close()
		return nil, err
	}
	t.port = port
	log.Debug("tunnel up", "public_key", self.String(), "listen_port", port, "addresses", cfg.Addresses, "peers", len(cfg.Peers))
	return t, nil
}

// deviceLogger routes wireguard-go's log lines to log at debug level (its "errors" are mostly
// expected events, like handshakes with peers that are offline).
func deviceLogger(log *slog.Logger) *device.Logger {
	logf := func(level string) func(string, ...any) {
		return func(format string, args ...any) {
			if !log.Enabled(context.Background(), slog.LevelDebug) {
				return
			}
			log.Debug(fmt.Sprintf(format, args...), "component", "wireguard", "wireguard_level", level)
		}
	}
	return &device.Logger{Verbosef: logf("verbose"), Errorf: logf("error")}
}

// writePeer appends the UAPI lines that create or update p, replacing its allowed IPs.
func writePeer(w *strings.Builder, p Peer, priv *ecdh.PrivateKey, self Key) error {
	if err := checkPeerKey(priv, self, p.PublicKey); err != nil {
		return err
	}
	if p.PersistentKeepalive < 0 || p.PersistentKeepalive > math.MaxUint16*time.Second {
		return fmt.Errorf("persistent keepalive %v out of range 0..65535s", p.PersistentKeepalive)
	}
	if p.Endpoint.IsValid() && (p.Endpoint.Port() == 0 || p.Endpoint.Addr().IsUnspecified()) {
		return fmt.Errorf("endpoint %v needs an address and a port", p.Endpoint)
	}
	fmt.Fprintf(w, "public_key=%s\nreplace_allowed_ips=true\n", p.PublicKey.hex())
	for _, a := range p.AllowedIPs {
		if !a.IsValid() {
			return fmt.Errorf("invalid allowed IP %q", a)
		}
		fmt.Fprintf(w, "allowed_ip=%s\n", a.Masked())
	}
	if p.Endpoint.IsValid() {
		ep := netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())
		fmt.Fprintf(w, "endpoint=%s\n", ep)
	}
	// Round a fraction of a second up, so a small positive interval is not turned off.
	secs := (p.PersistentKeepalive + time.Second - 1) / time.Second
	fmt.Fprintf(w, "persistent_keepalive_interval=%d\n", secs)
	return nil
}

// Stack returns the tunnel's network stack: dial, listen and forward TCP inside the tunnel.
func (t *Tunnel) Stack() *netstack.Stack { return t.stack }

// PublicKey returns this interface's public key.
func (t *Tunnel) PublicKey() Key { return t.self }

// Port returns the bound UDP port.
func (t *Tunnel) Port() uint16 { return t.port }

// CheckPeerKey returns an error wrapping ErrBadPeerKey when pub cannot be a peer of this
// interface: the all-zero key, a low-order Curve25519 point, or the interface's own key. AddPeer
// and New refuse such peers; callers that store keys check them first.
func (t *Tunnel) CheckPeerKey(pub Key) error { return checkPeerKey(t.priv, t.self, pub) }

// AddPeer adds p, or updates the peer with p's public key: its allowed IPs are replaced, its
// endpoint replaced if p has one, its persistent keepalive set.
func (t *Tunnel) AddPeer(p Peer) error {
	var uapi strings.Builder
	if err := writePeer(&uapi, p, t.priv, t.self); err != nil {
		return fmt.Errorf("tunnel: add peer %s: %w", p.PublicKey, err)
	}
	if err := t.dev.IpcSet(uapi.String()); err != nil {
		return fmt.Errorf("tunnel: add peer %s: %w", p.PublicKey, err)
	}
	return nil
}

// RemovePeer removes the peer with public key pub: its sessions are dropped at once, so no
// packet to or from it passes any more. It fails with ErrPeerNotFound for an unknown key.
func (t *Tunnel) RemovePeer(pub Key) error {
	if t.dev.LookupPeer(device.NoisePublicKey(pub)) == nil {
		return fmt.Errorf("tunnel: remove peer %s: %w", pub, ErrPeerNotFound)
	}
	if err := t.dev.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", pub.hex())); err != nil {
		return fmt.Errorf("tunnel: remove peer %s: %w", pub, err)
	}
	return nil
}

// Rehandshake makes the peer with public key pub start a new handshake now: its current session
// keys are retired, so packets wait for the new session instead of going out under keys the peer
// may have lost (a restarted node), and one handshake initiation is sent at once. wireguard-go then
// retries on its own every 5 s (REKEY_TIMEOUT) until the peer answers or 90 s pass
// (REKEY_ATTEMPT_TIME); the next outgoing packet starts it again after that.
func (t *Tunnel) Rehandshake(pub Key) error {
	p := t.dev.LookupPeer(device.NoisePublicKey(pub))
	if p == nil {
		return fmt.Errorf("tunnel: rehandshake %s: %w", pub, ErrPeerNotFound)
	}
	p.ExpireCurrentKeypairs()
	if err := p.SendHandshakeInitiation(false); err != nil {
		return fmt.Errorf("tunnel: rehandshake %s: %w", pub, err)
	}
	return nil
}

// Peers returns the state of every peer, from wireguard-go's UAPI get operation.
func (t *Tunnel) Peers() ([]PeerStatus, error) {
	out, err := t.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("tunnel: read peers: %w", err)
	}
	peers, err := parsePeers(out)
	if err != nil {
		return nil, fmt.Errorf("tunnel: read peers: %w", err)
	}
	return peers, nil
}

// parsePeers reads the peer sections of a UAPI get answer.
func parsePeers(uapi string) ([]PeerStatus, error) {
	var peers []PeerStatus
	var cur *PeerStatus
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			peers = append(peers, *cur)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(uapi))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		var err error
		switch key {
		case "public_key":
			flush()
			cur, sec, nsec = &PeerStatus{}, 0, 0
			var k []byte
			if k, err = decodeHexKey(value); err == nil {
				cur.PublicKey = Key(k)
			}
		case "endpoint", "last_handshake_time_sec", "last_handshake_time_nsec", "rx_bytes", "tx_bytes":
			if cur == nil {
				return nil, fmt.Errorf("%s before any public_key", key)
			}
			switch key {
			case "endpoint":
				cur.Endpoint = value
			case "last_handshake_time_sec":
				sec, err = strconv.ParseInt(value, 10, 64)
			case "last_handshake_time_nsec":
				nsec, err = strconv.ParseInt(value, 10, 64)
			case "rx_bytes":
				cur.RxBytes, err = strconv.ParseUint(value, 10, 64)
			case "tx_bytes":
				cur.TxBytes, err = strconv.ParseUint(value, 10, 64)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("bad %s line %q: %w", key, value, err)
		}
	}
	flush()
	return peers, sc.Err()
}

// listenPort reads the bound UDP port from the UAPI get answer.
func (t *Tunnel) listenPort() (uint16, error) {
	out, err := t.dev.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("tunnel: read listen port: %w", err)
	}
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return 0, fmt.Errorf("tunnel: read listen port %q: %w", v, err)
			}
			return uint16(p), nil
		}
	}
	return 0, errors.New("tunnel: read listen port: wireguard reports no bound port")
}

// Close shuts the device down (closing its UDP socket and the network stack, which resets all
// connections inside the tunnel). It is safe to call more than once.
func (t *Tunnel) Close() error {
	t.once.Do(func() {
		t.dev.Close()
		t.stack.Close()
	})
	return nil
}
