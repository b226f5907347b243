package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferryhq/ferry/netstack"
)

var (
	nodeAddr   = netip.MustParseAddr("198.18.0.1")
	clientAddr = netip.MustParseAddr("198.18.0.2")
)

// startTunnel starts a real wireguard-go tunnel on loopback and closes it with the test.
func startTunnel(t testing.TB, cfg Config) *Tunnel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tun, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("start tunnel: %v", err)
	}
	t.Cleanup(func() { tun.Close() })
	return tun
}

func mustKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// startNode starts the node's tunnel: promiscuous stack at 198.18.0.1, ephemeral UDP port.
func startNode(t testing.TB, log *slog.Logger) (*Tunnel, Key) {
	t.Helper()
	key := mustKey(t)
	return startTunnel(t, Config{PrivateKey: key, Addresses: []netip.Addr{nodeAddr}, Promiscuous: true, Logger: log}), key
}

// startClient enrols a client at addr with the node (unless enrol is false) and starts its
// tunnel with the node as its only peer.
func startClient(t testing.TB, node *Tunnel, nodeKey Key, addr netip.Addr, enrol bool) (*Tunnel, Key) {
	t.Helper()
	key := mustKey(t)
	if enrol {
		err := node.AddPeer(Peer{PublicKey: key.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(addr, 32)}})
		if err != nil {
			t.Fatalf("enrol client: %v", err)
		}
	}
	c := startTunnel(t, Config{
		PrivateKey: key,
		Addresses:  []netip.Addr{addr},
		Peers: []Peer{{
			PublicKey:           nodeKey.PublicKey(),
			AllowedIPs:          []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("100.64.0.0/10")},
			Endpoint:            netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), node.Port()),
			PersistentKeepalive: 25 * time.Second,
		}},
	})
	return c, key
}

func echo(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
}

// echoForwarder installs an echo forwarder on node and returns the flows it accepted.
func echoForwarder(node *Tunnel) <-chan netstack.Flow {
	flows := make(chan netstack.Flow, 16)
	node.Stack().SetForwarder(64, func(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
		select {
		case flows <- f:
		default:
		}
		return echo, nil
	})
	return flows
}

func dial(t testing.TB, tun *Tunnel, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return tun.Stack().DialContext(ctx, "tcp", addr)
}

func roundTrip(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes differs", len(msg))
	}
}

func findPeer(t *testing.T, tun *Tunnel, pub Key) (PeerStatus, bool) {
	t.Helper()
	peers, err := tun.Peers()
	if err != nil {
		t.Fatalf("Peers: %v", err)
	}
	for _, p := range peers {
		if p.PublicKey == pub {
			return p, true
		}
	}
	return PeerStatus{}, false
}

func TestForwardThroughTunnel(t *testing.T) {
	var logs syncBuffer
	node, nodeKey := startNode(t, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	flows := echoForwarder(node)
	client, clientKey := startClient(t, node, nodeKey, clientAddr, true)

	c, err := dial(t, client, "100.64.0.7:5432", 10*time.Second)
	if err != nil {
		t.Fatalf("dial through tunnel: %v", err)
	}
	defer c.Close()
	f := <-flows
	if f.Local != netip.MustParseAddrPort("100.64.0.7:5432") {
		t.Errorf("flow local = %v, want 100.64.0.7:5432", f.Local)
	}
	if f.Remote.Addr() != clientAddr || f.Remote.String() != c.LocalAddr().String() {
		t.Errorf("flow remote = %v, want the client's %v", f.Remote, c.LocalAddr())
	}
	roundTrip(t, c, []byte("SELECT 1"))
	big := make([]byte, 4<<20)
	rand.Read(big)
	roundTrip(t, c, big)

	p, ok := findPeer(t, node, clientKey.PublicKey())
	if !ok {
		t.Fatal("node does not list the client as a peer")
	}
	if p.LastHandshake.IsZero() || p.RxBytes < 4<<20 || p.TxBytes < 4<<20 {
		t.Errorf("node's view of client = %+v, want a handshake and > 4 MiB each way", p)
	}
	if !strings.HasPrefix(p.Endpoint, "127.0.0.1:") {
		t.Errorf("client endpoint seen by node = %q, want 127.0.0.1:port", p.Endpoint)
	}
	np, ok := findPeer(t, client, nodeKey.PublicKey())
	if want := fmt.Sprintf("127.0.0.1:%d", node.Port()); !ok || np.Endpoint != want {
		t.Errorf("client's node peer = %+v, want endpoint %s", np, want)
	}
	if !strings.Contains(logs.String(), "component=wireguard") {
		t.Error("no wireguard-go log lines reached the slog logger at debug level")
	}
}

func TestRefusedThroughTunnel(t *testing.T) {
	node, nodeKey := startNode(t, nil)
	node.Stack().SetForwarder(8, func(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
		return nil, fmt.Errorf("no resource at %v", f.Local)
	})
	client, _ := startClient(t, node, nodeKey, clientAddr, true)
	c, err := dial(t, client, "100.64.0.8:5432", 10*time.Second)
	if err == nil {
		c.Close()
		t.Fatal("dial succeeded, want connection refused")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial error = %v, want ECONNREFUSED (an RST, not a timeout)", err)
	}
}

func TestHTTPOverTunnel(t *testing.T) {
	node, nodeKey := startNode(t, nil)
	ln, err := node.Stack().ListenTCP(netip.AddrPortFrom(nodeAddr, 80))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s", r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	client, _ := startClient(t, node, nodeKey, clientAddr, true)
	hc := &http.Client{Transport: &http.Transport{DialContext: client.Stack().DialContext}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://198.18.0.1/v1/status")
	if err != nil {
		t.Fatalf("GET through tunnel: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "hello 198.18.0.2:") {
		t.Fatalf("response = %d %q, want 200 from the client's tunnel address", resp.StatusCode, body)
	}
}

func TestUnknownPeerGetsNothing(t *testing.T) {
	node, nodeKey := startNode(t, nil)
	flows := echoForwarder(node)
	stranger, strangerKey := startClient(t, node, nodeKey, netip.MustParseAddr("198.18.0.3"), false)

	c, err := dial(t, stranger, "100.64.0.7:5432", time.Second)
	if err == nil {
		c.Close()
		t.Fatal("a client that is not a peer reached the node")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial error = %v, want a timeout (no handshake, no answer)", err)
	}
	if _, ok := findPeer(t, node, strangerKey.PublicKey()); ok {
		t.Error("node lists the stranger as a peer")
	}
	if p, ok := findPeer(t, stranger, nodeKey.PublicKey()); !ok || !p.LastHandshake.IsZero() || p.RxBytes != 0 {
		t.Errorf("stranger's view of node = %+v, want no handshake and nothing received", p)
	}
	select {
	case f := <-flows:
		t.Errorf("forwarder saw %v from a stranger", f)
	default:
	}
}

func TestRemovePeerCutsOff(t *testing.T) {
	node, nodeKey := startNode(t, nil)
	echoForwarder(node)
	client, clientKey := startClient(t, node, nodeKey, clientAddr, true)
	c, err := dial(t, client, "100.64.0.7:5432", 10*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	roundTrip(t, c, []byte("before"))

	if err := node.RemovePeer(clientKey.PublicKey()); err != nil {
		t.Fatalf("RemovePeer: %v", err)
	}
	if _, ok := findPeer(t, node, clientKey.PublicKey()); ok {
		t.Error("removed peer still listed")
	}
	// The established connection gets no more answers.
	c.SetDeadline(time.Now().Add(time.Second))
	c.Write([]byte("after"))
	n, err := c.Read(make([]byte, 16))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("read on cut-off connection = %d, %v; want a timeout", n, err)
	}
	// Nor does a new one get through.
	if c2, err := dial(t, client, "100.64.0.7:5432", time.Second); !errors.Is(err, context.DeadlineExceeded) {
		if c2 != nil {
			c2.Close()
		}
		t.Errorf("dial after removal = %v, want a timeout", err)
	}
	if err := node.RemovePeer(clientKey.PublicKey()); !errors.Is(err, ErrPeerNotFound) {
		t.Errorf("second RemovePeer = %v, want ErrPeerNotFound", err)
	}
}

// TestAddPeerReplacesAllowedIPs updates an enrolled peer so its tunnel address is no longer
// allowed: the node then drops its packets (cryptokey routing).
func TestAddPeerReplacesAllowedIPs(t *testing.T) {
	node, nodeKey := startNode(t, nil)
	echoForwarder(node)
	client, clientKey := startClient(t, node, nodeKey, clientAddr, true)
	err := node.AddPeer(Peer{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.18.0.99/32")}})
	if err != nil {
		t.Fatalf("update peer: %v", err)
	}
	if peers, _ := node.Peers(); len(peers) != 1 {
		t.Fatalf("node has %d peers after an update, want 1", len(peers))
	}
	if c, err := dial(t, client, "100.64.0.7:5432", time.Second); !errors.Is(err, context.DeadlineExceeded) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial from a source outside the peer's allowed IPs = %v, want a timeout", err)
	}
}

func TestConfigErrors(t *testing.T) {
	priv := mustKey(t)
	peerKey := mustKey(t).PublicKey()
	addrs := []netip.Addr{clientAddr}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no private key", Config{Addresses: addrs}},
		{"listen port negative", Config{PrivateKey: priv, Addresses: addrs, ListenPort: -1}},
		{"listen port too large", Config{PrivateKey: priv, Addresses: addrs, ListenPort: 70000}},
		{"no addresses", Config{PrivateKey: priv}},
		{"peer without key", Config{PrivateKey: priv, Addresses: addrs, Peers: []Peer{{}}}},
		{"peer is self", Config{PrivateKey: priv, Addresses: addrs, Peers: []Peer{{PublicKey: priv.PublicKey()}}}},
		{"invalid allowed IP", Config{PrivateKey: priv, Addresses: addrs, Peers: []Peer{{PublicKey: peerKey, AllowedIPs: []netip.Prefix{{}}}}}},
		{"endpoint without port", Config{PrivateKey: priv, Addresses: addrs, Peers: []Peer{{PublicKey: peerKey, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)}}}},
		{"negative keepalive", Config{PrivateKey: priv, Addresses: addrs, Peers: []Peer{{PublicKey: peerKey, PersistentKeepalive: -time.Second}}}},
		{"keepalive too long", Config{PrivateKey: priv, Addresses: addrs, Peers: []Peer{{PublicKey: peerKey, PersistentKeepalive: 100000 * time.Second}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tun, err := New(context.Background(), tt.cfg)
			if err == nil {
				tun.Close()
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}

func TestAddPeerErrors(t *testing.T) {
	node, nodeKey := startNode(t, nil)
	tests := []struct {
		name string
		peer Peer
	}{
		{"no key", Peer{}},
		{"own key", Peer{PublicKey: nodeKey.PublicKey()}},
		{"invalid allowed IP", Peer{PublicKey: mustKey(t).PublicKey(), AllowedIPs: []netip.Prefix{{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := node.AddPeer(tt.peer); err == nil {
				t.Fatal("AddPeer succeeded, want an error")
			}
		})
	}
	if peers, err := node.Peers(); err != nil || len(peers) != 0 {
		t.Errorf("Peers after failed adds = %v, %v; want none", peers, err)
	}
	if err := node.RemovePeer(mustKey(t).PublicKey()); !errors.Is(err, ErrPeerNotFound) {
		t.Errorf("RemovePeer of unknown key = %v, want ErrPeerNotFound", err)
	}
}

// TestBadPeerKeysRefused: the all-zero key, every low-order Curve25519 point and the interface's
// own key are refused as peers by AddPeer, CheckPeerKey and New, with ErrBadPeerKey; wireguard-go
// alone would accept a low-order point and fail every handshake with it.
func TestBadPeerKeysRefused(t *testing.T) {
	node, nodeKey := startNode(t, nil)
	bad := lowOrderKeys(t)
	bad["own key"] = nodeKey.PublicKey()
	allowed := []netip.Prefix{netip.PrefixFrom(clientAddr, 32)}
	for name, k := range bad {
		t.Run(name, func(t *testing.T) {
			if err := node.AddPeer(Peer{PublicKey: k, AllowedIPs: allowed}); !errors.Is(err, ErrBadPeerKey) {
				t.Errorf("AddPeer(%x) = %v, want ErrBadPeerKey", k, err)
			}
			if err := node.CheckPeerKey(k); !errors.Is(err, ErrBadPeerKey) {
				t.Errorf("CheckPeerKey(%x) = %v, want ErrBadPeerKey", k, err)
			}
			tun, err := New(context.Background(), Config{PrivateKey: nodeKey, Addresses: []netip.Addr{nodeAddr}, Peers: []Peer{{PublicKey: k, AllowedIPs: allowed}}})
			if err == nil {
				tun.Close()
			}
			if !errors.Is(err, ErrBadPeerKey) {
				t.Errorf("New with peer %x = %v, want ErrBadPeerKey", k, err)
			}
		})
	}
	if peers, err := node.Peers(); err != nil || len(peers) != 0 {
		t.Errorf("Peers after refused adds = %v, %v; want none", peers, err)
	}
	good := mustKey(t).PublicKey()
	if err := node.CheckPeerKey(good); err != nil {
		t.Errorf("CheckPeerKey(a generated key) = %v", err)
	}
	if err := node.AddPeer(Peer{PublicKey: good, AllowedIPs: allowed}); err != nil {
		t.Errorf("AddPeer(a generated key) = %v", err)
	}
}

func TestCloseTwice(t *testing.T) {
	node, _ := startNode(t, nil)
	if err := node.Close(); err != nil {
		t.Fatal(err)
	}
	if err := node.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestParsePeers(t *testing.T) {
	k := mustKey(t).PublicKey()
	good := "private_key=00\nlisten_port=5\npublic_key=" + k.hex() +
		"\nendpoint=127.0.0.1:9\nlast_handshake_time_sec=100\nlast_handshake_time_nsec=5\nrx_bytes=7\ntx_bytes=8\npublic_key=" + k.hex() + "\nlast_handshake_time_sec=0\n"
	peers, err := parsePeers(good)
	if err != nil {
		t.Fatal(err)
	}
	want := []PeerStatus{{PublicKey: k, Endpoint: "127.0.0.1:9", LastHandshake: time.Unix(100, 5), RxBytes: 7, TxBytes: 8}, {PublicKey: k}}
	if len(peers) != 2 || !peers[0].LastHandshake.Equal(want[0].LastHandshake) || peers[0].Endpoint != want[0].Endpoint ||
		peers[0].RxBytes != 7 || peers[0].TxBytes != 8 || peers[1] != want[1] {
		t.Fatalf("parsePeers = %+v, want %+v", peers, want)
	}
	for _, bad := range []string{
		"rx_bytes=1\n",
		"public_key=zz\n",
		"public_key=" + k.hex() + "\nrx_bytes=-1\n",
		"public_key=" + k.hex() + "\nlast_handshake_time_sec=x\n",
	} {
		if _, err := parsePeers(bad); err == nil {
			t.Errorf("parsePeers(%q) succeeded, want an error", bad)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a slog handler.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A Curve25519 u-coordinate has more than one 32-byte spelling: bit 255 is ignored and u ≥ p is
// reduced mod p = 2^255-19. Such a spelling is the same point (the same shared secret) as a key
// already enrolled, yet other bytes, so it would slip past the "already enrolled" check as a
// second device of someone else's key. wg pubkey never makes one: they are refused.
func TestNonCanonicalPeerKeysRefused(t *testing.T) {
	node, _ := startNode(t, nil)
	good := mustKey(t).PublicKey()
	highBit := good
	highBit[31] |= 0x80
	var p Key // 2^255-19, the field prime: u = p is u = 0, u = p+9 is the base point 9
	p[0] = 0xed
	for i := 1; i < 31; i++ {
		p[i] = 0xff
	}
	p[31] = 0x7f
	pPlus9 := p
	pPlus9[0] += 9 // 0xf6, no carry
	max := p
	max[0] = 0xff // 2^255-1 = p+18
	for _, tc := range []struct {
		name string
		key  Key
	}{
		{"a real key with bit 255 set", highBit},
		{"p+9 (the base point spelled above p)", pPlus9},
		{"2^255-1", max},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := node.CheckPeerKey(tc.key); !errors.Is(err, ErrBadPeerKey) {
				t.Errorf("CheckPeerKey(%s) = %v, want ErrBadPeerKey", tc.key, err)
			}
			allowed := []netip.Prefix{netip.PrefixFrom(clientAddr, 32)}
			if err := node.AddPeer(Peer{PublicKey: tc.key, AllowedIPs: allowed}); !errors.Is(err, ErrBadPeerKey) {
				t.Errorf("AddPeer(%s) = %v, want ErrBadPeerKey", tc.key, err)
			}
		})
	}
	if err := node.CheckPeerKey(good); err != nil {
		t.Errorf("CheckPeerKey(the canonical key) = %v", err)
	}
}
