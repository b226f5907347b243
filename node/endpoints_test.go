//go:build linux

package node_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
)

// cutWait bounds how long a test waits for the node to close a connection it must close. It is far
// above every timeout the tests configure: only a connection the node never cuts reaches it.
const cutWait = 45 * time.Second

// slowClient is one connection that sends first, then one byte every 10 seconds, and never finishes
// its request. Cut reports, once the node closed the connection, nil; a timeout error when the node
// had not closed it within cutWait.
type slowClient struct {
	c   net.Conn
	cut chan error
}

// dialFunc opens a connection to the endpoint under test.
type dialFunc func(ctx context.Context) (net.Conn, error)

// fromSource dials addr over TCP from the loopback address src (Linux routes all of 127.0.0.0/8 to
// the loopback interface), so that one test plays several sources.
func fromSource(src, addr string) dialFunc {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}

// startSlowClients opens n slow clients with dial, each sending first, and closes them when the test
// ends.
func startSlowClients(t *testing.T, ctx context.Context, n int, dial dialFunc, first []byte) []*slowClient {
	t.Helper()
	var out []*slowClient
	for i := 0; i < n; i++ {
		c, err := dial(ctx)
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		s := &slowClient{c: c, cut: make(chan error, 1)}
		out = append(out, s)
		go s.run(first)
	}
	return out
}

func (s *slowClient) run(first []byte) {
	_, _ = s.c.Write(first)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if _, err := s.c.Write([]byte{'x'}); err != nil {
					return
				}
			}
		}
	}()
	_ = s.c.SetReadDeadline(time.Now().Add(cutWait))
	_, err := io.Copy(io.Discard, s.c) // until the node closes (EOF or reset) or cutWait
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil // reset by the node: cut as well
	}
	s.cut <- err
}

// waitCut waits until every client was cut by the node, and fails the test for those that were not
// within cutWait.
func waitCut(t *testing.T, what string, cs []*slowClient) {
	t.Helper()
	kept := 0
	for _, s := range cs {
		if err := <-s.cut; err != nil {
			kept++
		}
	}
	if kept > 0 {
		t.Errorf("%s: %d of %d connections were still open after %v", what, kept, len(cs), cutWait)
	}
}

// countCut returns how many clients have been cut so far (and puts the answers back).
func countCut(cs []*slowClient) int {
	n := 0
	for _, s := range cs {
		select {
		case err := <-s.cut:
			s.cut <- err
			if err == nil {
				n++
			}
		default:
		}
	}
	return n
}

// insecureHTTPS is an HTTPS client for the enrollment endpoint (its certificate is self-signed; what
// is tested here is not the pinning) that dials from src.
func insecureHTTPS(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Timeout: cutWait, Transport: &http.Transport{
		DialContext:     d.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
}

// otherLoopbackIP returns a loopback address other than 127.0.0.1 and every address in not.
// startLoopbackNode inits and starts a node on loopback (loopbackNodeConfig) with set applied to its
// config, and closes it at cleanup.
func startLoopbackNode(t *testing.T, ctx context.Context, set func(*node.Config)) *node.Node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "node")
	cfg := loopbackNodeConfig()
	set(&cfg)
	if _, err := node.Init(ctx, dir, cfg, ""); err != nil {
		t.Fatal(err)
	}
	n, err := node.Start(ctx, dir, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func otherLoopbackIP(not ...string) string {
	for {
		ip := demo.RandomLoopbackIP()
		if !strings.Contains(strings.Join(not, ","), ip) {
			return ip
		}
	}
}

// TestEndpointConnectionCaps: connections over a source's cap (http_max_conns_per_source) are closed
// at once, so one source cannot hold more than its share of the enrollment endpoint while others
// enroll; and over the total cap (http_max_conns) new connections wait, served as soon as a slot
// frees. Timeouts are long here, so held connections stay held.
func TestEndpointConnectionCaps(t *testing.T) {
	const perSource, total = 8, 24
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startLoopbackNode(t, ctx, func(c *node.Config) {
		c.HTTPReadTimeout = node.Duration(10 * time.Minute)
		c.HTTPMaxConnsPerSource, c.HTTPMaxConns = perSource, total
	})
	addr := n.EnrollAddr().String()
	tlsHello := []byte{0x16} // the first byte of a TLS record: the node waits for the rest

	a := otherLoopbackIP()
	attack := startSlowClients(t, ctx, 100, fromSource(a, addr), tlsHello)
	deadline := time.Now().Add(cutWait)
	for countCut(attack) < len(attack)-perSource && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // would anything else be cut? (nothing may: the timeouts are long)
	if got := countCut(attack); got != len(attack)-perSource {
		t.Fatalf("%d of %d connections from one source were closed, want all but the cap of %d", got, len(attack), perSource)
	}

	// Another source enrolls meanwhile.
	tok, err := n.EnrollToken(ctx, node.DefaultAdmin)
	if err != nil {
		t.Fatal(err)
	}
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "c"), Runtime: filepath.Join(t.TempDir(), "r")}
	if _, err := client.Login(ctx, dirs, tok, "laptop"); err != nil {
		t.Fatalf("enrollment while one source holds its cap: %v", err)
	}

	// Two more sources fill the total; a fourth then waits until a connection closes.
	b, c := otherLoopbackIP(a), otherLoopbackIP(a)
	held := append(startSlowClients(t, ctx, perSource, fromSource(b, addr), tlsHello), startSlowClients(t, ctx, perSource, fromSource(c, addr), tlsHello)...)
	d := otherLoopbackIP(a, b, c)
	served := make(chan error, 1)
	go func() {
		resp, err := insecureHTTPS(d).Get("https://" + addr + "/v1/enroll")
		if err == nil {
			resp.Body.Close()
		}
		served <- err
	}()
	select {
	case err := <-served:
		t.Fatalf("a connection over the total cap of %d was served at once (%v)", total, err)
	case <-time.After(time.Second):
	}
	for _, s := range attack {
		s.c.Close() // the first source gives its slots back
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("the waiting connection, once slots were free: %v", err)
		}
	case <-time.After(cutWait):
		t.Fatal("the waiting connection was not served after slots were freed")
	}
	if got := countCut(held); got != 0 {
		t.Errorf("%d connections within the caps were closed", got)
	}
}

// TestEndpointsSlowClients: 200 slow clients (one byte every 10 s) on the enrollment endpoint and 40
// inside the tunnel on the control API, plus clients that keep an answered connection open and idle,
// are all cut within the (short, here) timeouts; meanwhile and afterwards a device enrolls, the
// control API answers, and psql works through the proxy. Bodies over the limit are refused with 413
// (declared) or 400 (sent), saying the limit.
func TestEndpointsSlowClients(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP(), NodeConfig: func(c *node.Config) {
		c.HTTPReadTimeout = node.Duration(2 * time.Second)
		c.HTTPIdleTimeout = node.Duration(2 * time.Second)
		c.HTTPMaxConnsPerSource = 16
		c.HTTPMaxConns = 64
	}})
	addr := env.Node.EnrollAddr().String()

	// A second device: its daemon plays the slow clients inside the tunnel.
	if err := env.Node.Catalog().AddUser(ctx, "mallory", false); err != nil {
		t.Fatal(err)
	}
	tok, err := env.Node.EnrollToken(ctx, "mallory")
	if err != nil {
		t.Fatal(err)
	}
	mdirs := client.Dirs{Config: filepath.Join(t.TempDir(), "c"), Runtime: filepath.Join(t.TempDir(), "r")}
	if _, err := client.Login(ctx, mdirs, tok, "mallory-laptop"); err != nil {
		t.Fatal(err)
	}
	mallory, err := client.StartDaemon(ctx, mdirs, slog.New(slog.DiscardHandler), client.WithMode(client.ModeLoopback))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mallory.Close() })
	apiAddr := netip.AddrPortFrom(api.NodeTunnelAddress, api.APIPort).String()
	inTunnel := func(ctx context.Context) (net.Conn, error) { return mallory.Dial(ctx, apiAddr) }

	attacker, idler := otherLoopbackIP(), otherLoopbackIP()
	enrollSlow := startSlowClients(t, ctx, 200, fromSource(attacker, addr), []byte{0x16})
	apiSlow := startSlowClients(t, ctx, 40, inTunnel, []byte("GET /v1/me HTTP/1.1\r\nHost: ferry\r\n"))
	// Idle clients (other sources: the attackers' are at their caps): one answered request, then
	// nothing on a kept-alive connection.
	var idle []*slowClient
	for i := 0; i < 4; i++ {
		idle = append(idle, idleAfterOneRequest(t, ctx, func(ctx context.Context) (net.Conn, error) {
			c, err := fromSource(idler, addr)(ctx)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			return tc, tc.HandshakeContext(ctx)
		}, "GET /v1/enroll HTTP/1.1\r\nHost: node\r\n\r\n"))
		idle = append(idle, idleAfterOneRequest(t, ctx, func(ctx context.Context) (net.Conn, error) { return env.Daemon.Dial(ctx, apiAddr) }, "GET /v1/me HTTP/1.1\r\nHost: ferry\r\n\r\n"))
	}

	// Meanwhile: a device enrolls, the admin's device uses the control API, psql works through the proxy.
	if err := env.Node.Catalog().AddUser(ctx, "engineer", false); err != nil {
		t.Fatal(err)
	}
	etok, err := env.Node.EnrollToken(ctx, "engineer")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Login(ctx, client.Dirs{Config: filepath.Join(t.TempDir(), "c"), Runtime: filepath.Join(t.TempDir(), "r")}, etok, "eng"); err != nil {
		t.Errorf("enrollment during the slow clients: %v", err)
	}
	if _, err := env.Daemon.API().Me(ctx); err != nil {
		t.Errorf("control API of another device during the slow clients: %v", err)
	}
	host, port, _ := net.SplitHostPort(env.Resource.Address)
	conn := fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable connect_timeout=30", host, port, demo.Database, demo.Role)
	if out, err := exec.CommandContext(ctx, "psql", conn, "-XAtc", "select 40+2").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Errorf("psql through the proxy during the slow clients: %v: %s", err, out)
	}

	waitCut(t, "slow clients of the enrollment endpoint", enrollSlow)
	waitCut(t, "slow clients of the control API", apiSlow)
	waitCut(t, "idle kept-alive connections", idle)

	// Afterwards, the attacker's own source is served again.
	resp, err := insecureHTTPS(attacker).Get("https://" + addr + "/v1/enroll")
	if err != nil {
		t.Fatalf("the attacker's source after its connections were cut: %v", err)
	}
	resp.Body.Close()

	// Bodies over the limit.
	enroll := insecureHTTPS("127.0.0.1")
	tunnelHTTP := &http.Client{Timeout: cutWait, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return env.Daemon.Dial(ctx, apiAddr) }}}
	big := `{"secret":"` + strings.Repeat("a", 2<<20) + `"}`
	for _, tc := range []struct {
		name       string
		c          *http.Client
		url        string
		body       io.Reader
		wantStatus int
		wantText   string
	}{
		{"enrollment, declared", enroll, "https://" + addr + "/v1/enroll", strings.NewReader(big), http.StatusRequestEntityTooLarge, "limit of 65536 bytes"},
		{"enrollment, declared 128 KiB", enroll, "https://" + addr + "/v1/enroll", strings.NewReader(`{"secret":"` + strings.Repeat("a", 128<<10) + `"}`), http.StatusRequestEntityTooLarge, "limit of 65536 bytes"},
		{"enrollment, chunked", enroll, "https://" + addr + "/v1/enroll", io.MultiReader(strings.NewReader(big)), http.StatusBadRequest, "limit of 65536 bytes"},
		{"control API, declared", tunnelHTTP, "http://" + apiAddr + "/v1/admin/datasources", strings.NewReader(big), http.StatusRequestEntityTooLarge, "limit of 1048576 bytes"},
		{"control API, chunked", tunnelHTTP, "http://" + apiAddr + "/v1/admin/datasources", io.MultiReader(strings.NewReader(big)), http.StatusBadRequest, "limit of 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.c.Post(tc.url, "application/json", tc.body)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e api.Error
			raw, _ := io.ReadAll(resp.Body)
			_ = json.Unmarshal(raw, &e)
			if resp.StatusCode != tc.wantStatus || !strings.Contains(e.Error, tc.wantText) {
				t.Errorf("status %d %q, want %d saying %q", resp.StatusCode, bytes.TrimSpace(raw), tc.wantStatus, tc.wantText)
			}
		})
	}
}

// idleAfterOneRequest opens a connection with dial, sends req, reads the answer's header, and then
// sits idle on the kept-alive connection; the returned client reports when the node closes it.
func idleAfterOneRequest(t *testing.T, ctx context.Context, dial dialFunc, req string) *slowClient {
	t.Helper()
	c, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(cutWait))
	buf := make([]byte, 12)
	if _, err := io.ReadFull(c, buf); err != nil || !bytes.HasPrefix(buf, []byte("HTTP/1.1 ")) {
		t.Fatalf("first answer: %q, %v", buf, err)
	}
	s := &slowClient{c: c, cut: make(chan error, 1)}
	var once sync.Once
	go once.Do(func() {
		_, err := io.Copy(io.Discard, c) // the rest of the answer, then until the node closes
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			err = nil
		}
		s.cut <- err
	})
	return s
}
