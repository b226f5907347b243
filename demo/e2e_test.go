package demo_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/resource"
	"github.com/ferryhq/ferry/tunnel"
)

// startDemo starts the whole installation for one test and stops it at cleanup.
func startDemo(t *testing.T) *demo.Env {
	t.Helper()
	testenv.NeedBins(t, "psql")
	return testenv.Start(t, demo.Options{LoopbackIP: demo.RandomLoopbackIP()})
}

func psql(t *testing.T, conn string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, args...)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=20")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		return out.String() + errOut.String(), err
	}
	return out.String(), nil
}

// recordingConn keeps every byte the client receives.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	got bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

// TestEndToEnd runs every end-to-end check against one installation: the managed-identity tokens that
// MSAL caches for the whole process are bound to one emulator's signing key.
func TestEndToEnd(t *testing.T) {
	env := startDemo(t)
	t.Run("psql through ferry", func(t *testing.T) { testPsqlThroughFerry(t, env) })
	t.Run("identity kinds", func(t *testing.T) { testIdentityKinds(t, env) })
	t.Run("refusals reach psql", func(t *testing.T) { testRefusalsReachPsql(t, env) })
	t.Run("unenrolled key gets nothing", func(t *testing.T) { testUnenrolledKeyGetsNothing(t, env) })
	t.Run("access", func(t *testing.T) { testAccess(t, env) })
}

func testPsqlThroughFerry(t *testing.T, env *demo.Env) {
	conn := client.ConnString(env.Resource)
	if ap, err := netip.ParseAddrPort(env.Resource.Address); err != nil || !ap.Addr().IsLoopback() || ap.Port() != 10001 {
		t.Fatalf("loopback address = %q, want a loopback IP and port 10001", env.Resource.Address)
	}

	out, err := psql(t, conn, "-c", "SELECT version()")
	if err != nil || !strings.Contains(out, "PostgreSQL 15") {
		t.Fatalf("psql SELECT version(): err=%v out=%q", err, out)
	}
	out, err = psql(t, conn,
		"-c", "CREATE TABLE ferry_e2e (id int PRIMARY KEY, name text)",
		"-c", "INSERT INTO ferry_e2e VALUES (1, 'one'), (2, 'two'), (3, 'three')",
		"-c", "SELECT id, name, current_user FROM ferry_e2e ORDER BY id")
	if err != nil {
		t.Fatalf("psql: %v: %s", err, out)
	}
	want := "1|one|mi_user\n2|two|mi_user\n3|three|mi_user\n"
	if !strings.HasSuffix(out, want) {
		t.Fatalf("psql rows = %q, want suffix %q", out, want)
	}

	// The node's audit log holds the connections and the statements, with user and resource.
	ctx := context.Background()
	var conns []audit.Connection
	deadline := time.Now().Add(10 * time.Second)
	for {
		conns, err = env.Node.Audit().Connections(ctx, audit.ConnectionFilter{Limit: 50})
		if err != nil {
			t.Fatal(err)
		}
		ended := 0
		for _, c := range conns {
			if !c.End.IsZero() {
				ended++
			}
		}
		if ended >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(conns) < 2 {
		t.Fatalf("connection log has %d records, want 2: %+v", len(conns), conns)
	}
	for _, c := range conns {
		if c.User != "admin" || c.Resource != demo.ResourceName || c.Outcome != "ok" || c.End.IsZero() {
			t.Errorf("connection record = %+v, want user admin, resource %s, outcome ok, ended", c, demo.ResourceName)
		}
		if ap, err := netip.ParseAddrPort(c.ClientAddr); err != nil || !api.TunnelSubnet.Contains(ap.Addr()) {
			t.Errorf("connection client address = %q, want a tunnel address", c.ClientAddr)
		}
	}
	qs, err := env.Node.Audit().Queries(ctx, audit.QueryFilter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{"SELECT version()", "CREATE TABLE ferry_e2e", "INSERT INTO ferry_e2e VALUES (1, 'one')", "SELECT id, name, current_user FROM ferry_e2e"} {
		found := false
		for _, q := range qs {
			if strings.Contains(q.SQL, stmt) && q.User == "admin" && q.Resource == demo.ResourceName {
				found = true
			}
		}
		if !found {
			t.Errorf("query log lacks %q by admin on %s; have %+v", stmt, demo.ResourceName, qs)
		}
	}

	// The access token never reaches the client: not in what it stores, not in what it receives.
	var rec *recordingConn
	cfg, err := pgconn.ParseConfig(conn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		rec = &recordingConn{Conn: c}
		return rec, nil
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgconn through ferry: %v", err)
	}
	if _, err := pc.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	pc.Close(ctx)
	tokens := env.Emu.IssuedTokens()
	if len(tokens) == 0 {
		t.Fatal("the emulator issued no token")
	}
	seen := [][]byte{rec.got.Bytes()}
	for _, dir := range []string{env.Dirs.Config, env.Dirs.Runtime} {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				b, _ := os.ReadFile(p)
				seen = append(seen, b)
			}
			return nil
		})
	}
	for _, b := range seen {
		for _, tok := range tokens {
			if bytes.Contains(b, []byte(tok)) || bytes.Contains(b, []byte(tok[:40])) {
				t.Fatal("an access token reached the client")
			}
		}
		if bytes.Contains(b, []byte("eyJ0eXAi")) || bytes.Contains(b, []byte("eyJhbGci")) {
			t.Fatal("something JWT-shaped reached the client")
		}
	}
	if st, err := os.Stat(filepath.Join(env.Dirs.Config, "state.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("client state file: %v, mode %v; want mode 0600", err, st.Mode().Perm())
	}
}

// TestIdentityKinds: a resource with a client ID logs in with that user-assigned identity, one without
// uses the VM's system-assigned identity; the emulator sees the matching IMDS requests.
func testIdentityKinds(t *testing.T, env *demo.Env) {
	ctx := context.Background()
	sys := env.Emu.System()
	if err := env.Emu.CreatePrincipal(ctx, "vm_role", sys.ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := env.Emu.Exec(ctx, "GRANT CONNECT ON DATABASE production TO vm_role"); err != nil {
		t.Fatal(err)
	}
	r := resource.New("azure-pg-system")
	r.Hostname = env.Emu.Hostname()
	r.Database = demo.Database
	r.Username = "vm_role"
	r.BindInterface = demo.RandomLoopbackIP()
	if _, err := env.Daemon.API().AddDatasource(ctx, r); err != nil {
		t.Fatal(err)
	}
	st, err := env.Daemon.Connect(ctx, r.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		conn, wantUser, wantClientID string
	}{
		{client.ConnString(env.Resource), "mi_user", demo.ClientID},
		{client.ConnString(st), "vm_role", ""},
	} {
		out, err := psql(t, tc.conn, "-c", "SELECT current_user")
		if err != nil || strings.TrimSpace(out) != tc.wantUser {
			t.Errorf("current_user via %s = %q (err %v), want %s", tc.conn, out, err, tc.wantUser)
		}
		found := false
		for _, req := range env.Emu.IMDSRequests() {
			if req.ClientID == tc.wantClientID && req.Status == 200 {
				found = true
			}
		}
		if !found {
			t.Errorf("IMDS saw no successful request with client_id %q: %+v", tc.wantClientID, env.Emu.IMDSRequests())
		}
	}
}

// TestRefusalsReachPsql: an IMDS outage and an unmapped principal give psql a FATAL ErrorResponse with
// SQLSTATE, never a dropped connection or a hang.
func testRefusalsReachPsql(t *testing.T, env *demo.Env) {
	ctx := context.Background()
	unmapped := azureemu.Identity{ClientID: "22222222-3333-4444-5555-666666666666", ObjectID: "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff", DisplayName: "unmapped-mi"}
	outage := azureemu.Identity{ClientID: "33333333-4444-5555-6666-777777777777", ObjectID: "cccccccc-dddd-4eee-8fff-000000000000", DisplayName: "outage-mi"}
	env.Emu.AddUserIdentity(unmapped)
	env.Emu.AddUserIdentity(outage)
	if err := env.Emu.CreatePrincipal(ctx, "outage_role", outage.ObjectID); err != nil {
		t.Fatal(err)
	}
	add := func(name, user, clientID string) client.ResourceStatus {
		r := resource.New(name)
		r.Hostname = env.Emu.Hostname()
		r.Database = demo.Database
		r.Username = user
		r.ManagedIdentityClientID = clientID
		r.BindInterface = demo.RandomLoopbackIP()
		if _, err := env.Daemon.API().AddDatasource(ctx, r); err != nil {
			t.Fatal(err)
		}
		st, err := env.Daemon.Connect(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	cases := []struct {
		name     string
		setup    func() client.ResourceStatus
		wantCode string
		wantText string
	}{
		{"unmapped principal", func() client.ResourceStatus { return add("unmapped", "unmapped_role", unmapped.ClientID) }, "28000", ""},
		{"IMDS outage", func() client.ResourceStatus {
			// The node health-checks a new resource at once, which fetches (and MSAL caches) its
			// token: the outage starts before the resource exists.
			env.Emu.SetIMDSOutage(true)
			t.Cleanup(func() { env.Emu.SetIMDSOutage(false) })
			return add("outage", "outage_role", outage.ClientID)
		}, "28000", "token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := tc.setup()
			out, err := psql(t, client.ConnString(res), "-c", "SELECT 1")
			if err == nil || !strings.Contains(out, "FATAL") {
				t.Fatalf("psql: err=%v out=%q, want a FATAL error", err, out)
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			pc, err := pgconn.Connect(cctx, client.ConnString(res))
			if err == nil {
				pc.Close(ctx)
				t.Fatal("login succeeded, want a refusal")
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("error %v is not a PostgreSQL ErrorResponse", err)
			}
			if pgErr.Severity != "FATAL" || pgErr.Code != tc.wantCode || !strings.Contains(strings.ToLower(pgErr.Message), tc.wantText) {
				t.Fatalf("ErrorResponse = %s %s %q, want FATAL %s mentioning %q", pgErr.Severity, pgErr.Code, pgErr.Message, tc.wantCode, tc.wantText)
			}
		})
	}
}

// TestUnenrolledKeyGetsNothing: a WireGuard key the node never enrolled gets no handshake and no data.
func testUnenrolledKeyGetsNothing(t *testing.T, env *demo.Env) {
	key, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	st, err := client.LoadState(env.Dirs)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey, err := tunnel.ParseKey(st.NodePublicKey)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := tunnel.New(context.Background(), tunnel.Config{
		PrivateKey: key,
		Addresses:  []netip.Addr{netip.MustParseAddr("198.18.0.2")}, // even claiming the enrolled device's address
		Peers: []tunnel.Peer{{
			PublicKey: nodeKey, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), env.Node.WireGuardPort()),
			AllowedIPs: []netip.Prefix{api.TunnelSubnet, resource.DefaultVNSubnet},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stranger.Close() })
	for _, target := range []string{env.Resource.VNAddress, netip.AddrPortFrom(api.NodeTunnelAddress, api.APIPort).String()} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := stranger.Stack().DialContext(ctx, "tcp", target)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("an unenrolled key reached %s through the tunnel", target)
		}
	}
	peers, err := env.Node.Tunnel().Peers()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if p.PublicKey == key.PublicKey() {
			t.Fatalf("the node lists the unenrolled key as a peer: %+v", p)
		}
	}
	sp, err := stranger.Peers()
	if err != nil {
		t.Fatal(err)
	}
	if len(sp) != 1 || !sp[0].LastHandshake.IsZero() || sp[0].RxBytes != 0 {
		t.Fatalf("the unenrolled key's view of the node = %+v, want no handshake and nothing received", sp)
	}
}
