//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/demo"
)

// installation is the demo installation plus what the bench needs to reach the server directly.
type installation struct {
	env       *demo.Env
	sockDir   string // the real server's unix socket directory
	frontHost string // 127.0.0.1, where the emulator's TLS front listens
	frontPort string
	token     string // an access token for demo.ClientID, as the front wants for password
	pgVersion string
}

func startInstallation(ctx context.Context, dir string, log *slog.Logger) (*installation, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// The resource listens on a random address of 127.0.0.0/8 (port 10001), so a demo running on
	// the machine (which holds 127.0.0.1:10001) does not get in the way; should that address be
	// taken all the same, try again a few times with another.
	var env *demo.Env
	var err error
	for attempt := 1; ; attempt++ {
		env, err = demo.Start(sctx, demo.Options{Dir: fmt.Sprintf("%s/demo%d", dir, attempt), Logger: log, LoopbackIP: demo.RandomLoopbackIP()})
		if err == nil {
			break
		}
		if attempt == 10 || !strings.Contains(err.Error(), "address already in use") {
			return nil, fmt.Errorf("start installation: %w", err)
		}
		step("  " + err.Error() + "; trying again")
		select {
		case <-sctx.Done():
			return nil, fmt.Errorf("start installation: %w", err)
		case <-time.After(3 * time.Second):
		}
	}
	inst := &installation{env: env}
	su, err := pgconn.ParseConfig(env.Emu.SuperuserConnString())
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("start installation: superuser connection string: %w", err)
	}
	inst.sockDir = su.Host
	if inst.frontHost, inst.frontPort, err = net.SplitHostPort(env.Emu.Addr()); err != nil {
		env.Close()
		return nil, fmt.Errorf("start installation: front address: %w", err)
	}
	now := time.Now()
	id := azureemu.Identity{ClientID: demo.ClientID, ObjectID: demo.ObjectID, DisplayName: demo.IdentityName}
	if inst.token, err = env.Emu.IssueToken(id, azureemu.Resource, now.Add(-time.Minute), now.Add(6*time.Hour)); err != nil {
		env.Close()
		return nil, fmt.Errorf("start installation: issue token: %w", err)
	}
	out, err := inst.socketPath().psql(ctx, "-Atc", "show server_version")
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("start installation: %w", err)
	}
	inst.pgVersion = strings.TrimSpace(out)
	return inst, nil
}

func (i *installation) Close() error { return i.env.Close() }

// initPgbench creates pgbench's tables at scale 1 (100,000 accounts, ~15 MB: they fit in
// shared_buffers, so the figures measure the path, not the disk) as the resource's role.
func (i *installation) initPgbench(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "pgbench", "-i", "-q", "-s", "1")
	cmd.Env = i.socketPath().environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w: %s", err, lastLines(string(out), 5))
	}
	return nil
}

// path is one way from pgbench/psql to the server, described by libpq's environment variables.
type path struct {
	Name        string
	Description string
	env         map[string]string // PGHOST, PGPORT, ...
	wrap        []string          // command prefix, e.g. ip netns exec NAME; nil runs tools directly
	cpuPid      int               // a process whose CPU time per transaction pgbench runs report (the node's), 0 = none
	// audited, when set, reads how many query records the path's node has written to its audit
	// log so far (a count that only grows), for the audit throughput during pgbench runs.
	audited func(ctx context.Context) (int64, error)
}

// command returns name with args as run on this path: with its environment, behind wrap.
func (p *path) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, p.wrap...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = p.environ()
	return cmd
}

func (p *path) environ() []string {
	out := os.Environ()
	for k, v := range p.env {
		out = append(out, k+"="+v)
	}
	return out
}

// psql runs psql with args on this path and returns its standard output.
func (p *path) psql(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := p.command(ctx, "psql", append([]string{"-X", "-v", "ON_ERROR_STOP=1"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("psql via %s: %w: %s", p.Name, err, lastLines(stderr.String(), 3))
	}
	return stdout.String(), nil
}

// check runs one query on the path.
func (p *path) check(ctx context.Context) error {
	out, err := p.psql(ctx, "-Atc", "select current_user")
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(out); got != demo.Role {
		return fmt.Errorf("logged in as %q, want %q", got, demo.Role)
	}
	return nil
}

// socketPath is the real server's unix socket: no TLS, no TCP, no front. It is the server's own
// ceiling, shown for reference; the ratios are to directPath.
func (i *installation) socketPath() *path {
	return &path{
		Name:        "socket",
		Description: "libpq to the real PostgreSQL's unix socket (no TCP, no TLS, no token): the server's own ceiling, for reference",
		env: map[string]string{
			"PGHOST": i.sockDir, "PGPORT": "5432", "PGUSER": demo.Role, "PGDATABASE": demo.Database,
			"PGSSLMODE": "disable", "PGAPPNAME": "bench-socket",
		},
	}
}

// tlsEnv is libpq's environment for a verified TLS login to the emulator's front with the token,
// as a client does against Azure Database for PostgreSQL, at host:port.
func (i *installation) tlsEnv(port, app string) map[string]string {
	return map[string]string{
		"PGHOST": i.env.Emu.Hostname(), "PGHOSTADDR": "127.0.0.1", "PGPORT": port,
		"PGUSER": demo.Role, "PGDATABASE": demo.Database, "PGPASSWORD": i.token,
		"PGSSLMODE": "verify-full", "PGSSLROOTCERT": i.env.Emu.CACertFile(), "PGAPPNAME": app,
	}
}

// directPath is the baseline: libpq over loopback TCP and verified TLS to the emulator's
// Azure-style front, password = access token, the same hop the node itself makes.
func (i *installation) directPath() *path {
	return &path{
		Name: "direct",
		Description: "libpq over loopback TCP + verified TLS to the Azure emulator's front (token as password), " +
			"which relays to the real server's unix socket: what a client does against Azure, and the hop every other path ends with",
		env: i.tlsEnv(i.frontPort, "bench-direct"),
	}
}

// ferryPath is Ferry in loopback mode: the client's local address, no TLS or password on the
// client side; the client carries it through WireGuard to the node, which logs in to the front.
func (i *installation) ferryPath() *path {
	host, port, _ := net.SplitHostPort(i.env.Resource.Address)
	return &path{
		Name: "ferry",
		Description: "libpq to the Ferry client's loopback address (" + i.env.Resource.Address + ", sslmode=disable) → userspace WireGuard → " +
			"node (token from IMDS, query log to SQLite) → TLS to the front",
		env: map[string]string{
			"PGHOST": host, "PGPORT": port, "PGUSER": demo.Role, "PGDATABASE": demo.Database,
			"PGSSLMODE": "disable", "PGAPPNAME": "bench-ferry",
		},
		audited: func(ctx context.Context) (int64, error) { return maxAuditID(ctx, i.env.Node.Catalog().DB()) },
	}
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	lines := strings.FieldsFunc(strings.TrimSpace(s), func(r rune) bool { return r == '\n' })
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// lookTool finds an executable on PATH or in the sbin directories, where Debian puts sshd and
// pgbouncer.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := d + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found on PATH or in /usr/sbin", name)
}
