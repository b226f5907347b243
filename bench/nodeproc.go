//go:build linux

package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
)

// procPathName is Ferry with the node as its own process, as deployed (ferry-node run);
// procPGPathName the same with the node's catalog and audit log on PostgreSQL, as a fleet's nodes
// keep them.
const (
	procPathName   = "ferry proc"
	procPGPathName = "ferry proc pg"
)

// catalogDatabase is the database on the emulator's server the "ferry proc pg" node keeps its
// catalog and audit log in, owned by the demo identity's role, which the node logs in as with its
// managed identity (as a fleet's node logs in to Azure Database for PostgreSQL).
const catalogDatabase = "ferry_catalog"

// nodeProc is a second node, run as its own ferry-node process against the same emulator, with a
// second client daemon (in this process) enrolled with it and azure-pg-mi-prod connected on
// another loopback address.
type nodeProc struct {
	cmd    *exec.Cmd
	done   chan struct{}
	out    *syncBuffer
	daemon *client.Daemon
	path   *path
	audit  *store.DB // the node's catalog database, read for the audit's progress
}

// startNodeProc builds cmd/ferry-node, creates its state with the same config the demo gives its
// in-process node, runs it and connects a client to it; or says why it cannot. With pg the node
// keeps its catalog and audit log in a PostgreSQL database (catalogDatabase on the emulator's
// server, logged in to with the node's managed identity) instead of its SQLite file.
func (i *installation) startNodeProc(ctx context.Context, dir string, log *slog.Logger, pg bool) (_ *nodeProc, err error) {
	name, sub := procPathName, "proc"
	if pg {
		name, sub = procPGPathName, "procpg"
	}
	bin := filepath.Join(dir, "ferry-node")
	if _, err := os.Stat(bin); err != nil {
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		build := exec.CommandContext(bctx, "go", "build", "-o", bin, "./cmd/ferry-node")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build cmd/ferry-node (run the bench from the repository root): %w: %s", err, lastLines(string(out), 3))
		}
	}
	enrollPort, err := freePort()
	if err != nil {
		return nil, err
	}
	wgPort, err := freeUDPPort()
	if err != nil {
		return nil, err
	}
	emu := i.env.Emu
	// The demo's node config, on ports known beforehand: this node is another process.
	cfg := demo.NodeConfig(emu)
	cfg.EnrollListen = net.JoinHostPort("127.0.0.1", strconv.Itoa(enrollPort))
	cfg.WireGuardPort = wgPort
	state := filepath.Join(dir, "node"+sub)
	p := &nodeProc{done: make(chan struct{}), out: &syncBuffer{}}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if pg {
		if err := emu.CreateDatabase(ctx, catalogDatabase, demo.Role); err != nil {
			return nil, fmt.Errorf("create the catalog database: %w", err)
		}
		_, port, _ := net.SplitHostPort(emu.Addr())
		cfg.CatalogURL = "postgres://" + demo.Role + "@" + net.JoinHostPort(emu.Hostname(), port) + "/" + catalogDatabase + "?sslmode=verify-full"
		cfg.CatalogClientID = demo.ClientID
		su, err := pgconn.ParseConfig(emu.SuperuserConnString())
		if err != nil {
			return nil, fmt.Errorf("catalog database: %w", err)
		}
		if p.audit, err = store.Open(ctx, store.Options{URL: fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", su.Host, su.Port, su.User, catalogDatabase)}); err != nil {
			return nil, fmt.Errorf("catalog database: %w", err)
		}
	}
	tok, err := node.Init(ctx, state, cfg, node.DefaultAdmin)
	if err != nil {
		return nil, err
	}
	if !pg {
		if p.audit, err = store.Open(ctx, store.Options{URL: "sqlite:" + filepath.Join(state, "ferry.db")}); err != nil {
			return nil, fmt.Errorf("the node's catalog: %w", err)
		}
	}
	p.cmd = exec.Command(bin, "run", "--state", state, "--metrics-listen", "")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ferry-node: %w", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	if err := waitTCP(ctx, p.done, cfg.EnrollListen); err != nil {
		return nil, fmt.Errorf("ferry-node: %w: %s", err, lastLines(p.out.String(), 3))
	}
	dirs := client.Dirs{Config: filepath.Join(dir, sub, "cfg"), Runtime: filepath.Join(dir, sub, "run")}
	if _, err := client.Login(ctx, dirs, tok, "bench-proc"); err != nil {
		return nil, fmt.Errorf("enroll with ferry-node: %w", err)
	}
	if p.daemon, err = client.StartDaemon(ctx, dirs, log.With("component", "client-proc")); err != nil {
		return nil, err
	}
	r := resource.New(demo.ResourceName)
	r.Hostname = emu.Hostname()
	r.Database = demo.Database
	r.Username = demo.Role
	r.ManagedIdentityClientID = demo.ClientID
	r.Subdomain = demo.ResourceName
	r.BindInterface = demo.RandomLoopbackIP()
	if _, err := p.daemon.API().AddDatasource(ctx, r); err != nil {
		return nil, fmt.Errorf("add %s to ferry-node: %w", demo.ResourceName, err)
	}
	st, err := p.daemon.Connect(ctx, demo.ResourceName)
	if err != nil {
		return nil, fmt.Errorf("connect %s through ferry-node: %w", demo.ResourceName, err)
	}
	host, port, err := net.SplitHostPort(st.Address)
	if err != nil {
		return nil, fmt.Errorf("%s's address %q: %w", demo.ResourceName, st.Address, err)
	}
	desc := "as ferry, but the node is its own process, as deployed (`ferry-node run`, built with CGO_ENABLED=0), " +
		"reached by the client over loopback UDP (" + st.Address + "); catalog and audit log in the node's SQLite file"
	if pg {
		desc = "as " + procPathName + ", but the node keeps its catalog and audit log in PostgreSQL, as a fleet's nodes do " +
			"(database " + catalogDatabase + " on the emulator's server, logged in to with the node's managed identity over verified TLS; " +
			"in a deployment it is a server of its own)"
	}
	p.path = &path{
		Name:        name,
		Description: desc,
		env: map[string]string{
			"PGHOST": host, "PGPORT": port, "PGUSER": demo.Role, "PGDATABASE": demo.Database,
			"PGSSLMODE": "disable", "PGAPPNAME": "bench-" + strings.ReplaceAll(name, " ", "-"),
		},
		cpuPid:  p.cmd.Process.Pid,
		audited: p.audited,
	}
	if err := p.path.check(ctx); err != nil {
		return nil, fmt.Errorf("%w (ferry-node: %s)", err, lastLines(p.out.String(), 3))
	}
	return p, nil
}

// audited returns the highest audit query record's row ID the node has written: how many it has
// written so far, as the row IDs count up.
func (p *nodeProc) audited(ctx context.Context) (int64, error) {
	return maxAuditID(ctx, p.audit)
}

// maxAuditID returns the highest row ID of db's audit_queries (0 for none).
func maxAuditID(ctx context.Context, db *store.DB) (int64, error) {
	var n sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT max(id) FROM audit_queries`).Scan(&n); err != nil {
		return 0, fmt.Errorf("read the audit's progress: %w", err)
	}
	return n.Int64, nil
}

// Close stops the client daemon and the node process (SIGTERM, then SIGKILL after 10 s).
func (p *nodeProc) Close() {
	defer func() {
		if p.audit != nil {
			_ = p.audit.Close()
			p.audit = nil
		}
	}()
	if p.daemon != nil {
		_ = p.daemon.Close()
		p.daemon = nil
	}
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

// freeUDPPort returns a loopback UDP port that was free a moment ago.
func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free UDP port: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

// waitTCP waits up to 30 s until addr accepts TCP connections, or done is closed.
func waitTCP(ctx context.Context, done <-chan struct{}, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c.Close()
		}
		select {
		case <-done:
			return fmt.Errorf("exited before listening on %s", addr)
		case <-ctx.Done():
			return fmt.Errorf("not listening on %s after 30 s: %w", addr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a process's output and a concurrent reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 { // keep the tail only
		s.b.Reset()
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
