//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/demo"
)

// peers runs the alternatives to Ferry: a private sshd with an `ssh -N -L` forward, and pgbouncer.
type peers struct {
	dir       string
	inst      *installation
	install   bool
	installed bool // apt-get update has run
	mu        sync.Mutex
	procs     []proc
}

// proc is a started peer process; done is closed once it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func newPeers(dir string, inst *installation, install bool) *peers {
	return &peers{dir: dir, inst: inst, install: install}
}

// need returns the path of tool, installing pkg with apt-get when it is missing and allowed.
func (p *peers) need(ctx context.Context, tool, pkg string) (string, error) {
	if path, err := lookTool(tool); err == nil {
		return path, nil
	}
	if !p.install || os.Geteuid() != 0 {
		return "", fmt.Errorf("%s is not installed (apt-get install %s; the bench installs it itself when run as root with -install)", tool, pkg)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("%s is not installed and there is no apt-get to install %s", tool, pkg)
	}
	step("installing " + pkg + " with apt-get")
	if !p.installed {
		if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
			return "", fmt.Errorf("apt-get update: %w: %s", err, lastLines(string(out), 3))
		}
		p.installed = true
	}
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get install %s: %w: %s", pkg, err, lastLines(string(out), 3))
	}
	return lookTool(tool)
}

// start runs cmd in its own process group, to be stopped by Close. The channel is closed when
// the process exits.
func (p *peers) start(cmd *exec.Cmd, logFile string) (<-chan struct{}, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	f.Close()
	if err != nil {
		return nil, err
	}
	pr := proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(pr.done) }()
	p.mu.Lock()
	p.procs = append(p.procs, pr)
	p.mu.Unlock()
	return pr.done, nil
}

// Close stops every process started, newest first, and waits for them.
func (p *peers) Close() {
	p.mu.Lock()
	procs := p.procs
	p.procs = nil
	p.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		pr := procs[i]
		_ = syscall.Kill(-pr.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-pr.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pr.cmd.Process.Pid, syscall.SIGKILL)
			<-pr.done
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitPath polls until the path answers a query or the time runs out.
func waitPath(ctx context.Context, pt *path, limit time.Duration, exited <-chan struct{}, logFile string) error {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			b, _ := os.ReadFile(logFile)
			return fmt.Errorf("exited: %s", lastLines(string(b), 3))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if last = pt.check(ctx); last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := os.ReadFile(logFile)
	return fmt.Errorf("not ready after %v: %v (log: %s)", limit, last, lastLines(string(b), 3))
}

// startSSH starts a private sshd on a loopback port (temp host key, temp authorized key, this
// account) and `ssh -N -L` from a local port to the emulator's front, so pgbench's TLS session to
// the front travels inside SSH, as with a bastion in front of Azure Database for PostgreSQL.
func (p *peers) startSSH(ctx context.Context) (*path, error) {
	sshd, err := p.need(ctx, "sshd", "openssh-server")
	if err != nil {
		return nil, err
	}
	sshBin, err := p.need(ctx, "ssh", "openssh-client")
	if err != nil {
		return nil, err
	}
	keygen, err := p.need(ctx, "ssh-keygen", "openssh-client")
	if err != nil {
		return nil, err
	}
	d := filepath.Join(p.dir, "ssh")
	if err := os.Mkdir(d, 0o700); err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	for _, k := range []string{"host_key", "user_key"} {
		out, err := exec.CommandContext(ctx, keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(d, k)).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(d, "user_key.pub"))
	if err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d, "authorized_keys"), pub, 0o600); err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	if os.Geteuid() == 0 {
		// sshd's privilege separation directory, which Debian's service unit normally creates.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("ssh: privilege separation directory: %w", err)
		}
	}
	me, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	sshPort, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	cfg := strings.Join([]string{
		"ListenAddress 127.0.0.1:" + strconv.Itoa(sshPort),
		"HostKey " + filepath.Join(d, "host_key"),
		"AuthorizedKeysFile " + filepath.Join(d, "authorized_keys"),
		"PidFile none",
		"UsePAM no",
		"StrictModes no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"AllowTcpForwarding yes",
		"AllowUsers " + me.Username,
		"MaxSessions 100",
		"LogLevel ERROR",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(d, "sshd_config"), []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	daemon := exec.Command(sshd, "-D", "-e", "-f", filepath.Join(d, "sshd_config"))
	if _, err := p.start(daemon, filepath.Join(d, "sshd.log")); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	localPort, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	fwd := exec.Command(sshBin, "-N",
		"-L", fmt.Sprintf("127.0.0.1:%d:%s:%s", localPort, p.inst.frontHost, p.inst.frontPort),
		"-p", strconv.Itoa(sshPort), "-i", filepath.Join(d, "user_key"),
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR", "-o", "ConnectionAttempts=20",
		me.Username+"@127.0.0.1")
	fwdDone, err := p.start(fwd, filepath.Join(d, "ssh.log"))
	if err != nil {
		return nil, fmt.Errorf("start ssh -L: %w", err)
	}
	pt := &path{
		Name: "ssh -L",
		Description: "libpq over TCP + verified TLS (token as password) to a local `ssh -N -L` forward → OpenSSH " +
			sshVersion(sshBin) + " (default cipher, loopback) → the front",
		env: p.inst.tlsEnv(strconv.Itoa(localPort), "bench-ssh"),
	}
	if err := waitPath(ctx, pt, 20*time.Second, fwdDone, filepath.Join(d, "ssh.log")); err != nil {
		b, _ := os.ReadFile(filepath.Join(d, "sshd.log"))
		return nil, fmt.Errorf("ssh -L: %w (sshd: %s)", err, lastLines(string(b), 3))
	}
	return pt, nil
}

func sshVersion(bin string) string {
	out, _ := exec.Command(bin, "-V").CombinedOutput()
	v, _, _ := strings.Cut(strings.TrimSpace(string(out)), ",")
	return v
}

// startPgbouncer starts pgbouncer in session mode on a loopback port. Clients log in without a
// password (auth_type trust, like Ferry's loopback address); pgbouncer logs in to the front over
// verified TLS with the access token as the password, as Ferry's node does.
func (p *peers) startPgbouncer(ctx context.Context) (*path, error) {
	bin, err := p.need(ctx, "pgbouncer", "pgbouncer")
	if err != nil {
		return nil, err
	}
	d := filepath.Join(p.dir, "pgbouncer")
	if err := os.Mkdir(d, 0o755); err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	ini := strings.Join([]string{
		"[databases]",
		fmt.Sprintf("%s = host=%s port=%s dbname=%s user=%s password=%s", demo.Database, p.inst.frontHost, p.inst.frontPort, demo.Database, demo.Role, p.inst.token),
		"[pgbouncer]",
		"listen_addr = 127.0.0.1",
		"listen_port = " + strconv.Itoa(port),
		"unix_socket_dir =",
		"auth_type = trust",
		"auth_file = " + filepath.Join(d, "userlist.txt"),
		"pool_mode = session",
		"max_client_conn = 200",
		"default_pool_size = 20",
		"server_tls_sslmode = verify-ca",
		"server_tls_ca_file = " + p.inst.env.Emu.CACertFile(),
		"ignore_startup_parameters = extra_float_digits",
		"logfile = " + filepath.Join(d, "pgbouncer.log"),
		"log_connections = 0",
		"log_disconnections = 0",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(d, "pgbouncer.ini"), []byte(ini), 0o644); err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d, "userlist.txt"), []byte(`"`+demo.Role+`" ""`+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	args := []string{filepath.Join(d, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		// pgbouncer refuses to run as root.
		acct, err := unprivileged()
		if err != nil {
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
		u, err := user.Lookup(acct)
		if err != nil {
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(d, uid, gid); err != nil { // for its log file
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
		args = append([]string{"-u", acct}, args...)
	}
	cmd := exec.Command(bin, args...)
	done, err := p.start(cmd, filepath.Join(d, "stderr.log"))
	if err != nil {
		return nil, fmt.Errorf("start pgbouncer: %w", err)
	}
	v, _ := exec.Command(bin, "--version").Output()
	ver, _, _ := strings.Cut(strings.TrimSpace(string(v)), "\n")
	pt := &path{
		Name: "pgbouncer",
		Description: "libpq over loopback TCP (no TLS, trust) to " + ver + " in session mode → verified TLS to the front " +
			"(token as password; pgbouncer keeps server connections, so pgbench -C reuses them)",
		env: map[string]string{
			"PGHOST": "127.0.0.1", "PGPORT": strconv.Itoa(port), "PGUSER": demo.Role, "PGDATABASE": demo.Database,
			"PGSSLMODE": "disable", "PGAPPNAME": "bench-pgbouncer",
		},
	}
	if err := waitPath(ctx, pt, 20*time.Second, done, filepath.Join(d, "stderr.log")); err != nil {
		b, _ := os.ReadFile(filepath.Join(d, "pgbouncer.log"))
		return nil, fmt.Errorf("pgbouncer: %w (log: %s)", err, lastLines(string(b), 3))
	}
	return pt, nil
}

// unprivileged names the account pgbouncer runs as when we are root.
func unprivileged() (string, error) {
	for _, name := range []string{"postgres", "nobody"} {
		if u, err := user.Lookup(name); err == nil && u.Uid != "0" {
			return name, nil
		}
	}
	return "", errors.New("running as root and found no unprivileged account (postgres or nobody) for pgbouncer")
}
