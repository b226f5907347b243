// Package vnet runs a Ferry client daemon in virtual networking mode inside a network namespace of
// its own, joined to the host by a veth pair, with the node (and everything else demo.Start builds)
// outside: the setup shared by the virtual networking end-to-end test (demo/vnettest) and the
// bench's VN figures. It needs Linux, root, iproute2 and /dev/net/tun (see Check).
//
// The daemon runs as a process of its own (ip netns exec moves only a new process into the
// namespace): the calling binary re-executes itself as the ferry CLI, so it must call RunCLIIfAsked
// first thing in main or TestMain.
package vnet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/cli"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/internal/netlab"
	"github.com/ferryhq/ferry/node"
)

// EnvRunCLI set to "1" makes a binary that calls RunCLIIfAsked act as the ferry CLI.
const EnvRunCLI = "FERRY_VNET_RUN_CLI"

// RunCLIIfAsked runs the ferry CLI (cli.Main) and exits when EnvRunCLI is "1"; otherwise it returns.
func RunCLIIfAsked() {
	if os.Getenv(EnvRunCLI) == "1" {
		os.Exit(cli.Main(nil))
	}
}

// Check reports why the namespace setup cannot run here (not root, no ip, no TUN devices, one of
// tools missing), or nil when it can.
func Check(tools ...string) error {
	if err := netlab.Check(tools...); err != nil {
		return err
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("no /dev/net/tun, the kernel offers no TUN devices here: %w", err)
	}
	return nil
}

// Netns is a network namespace joined to the host by a veth pair (a /30: HostIP on the host side,
// NSIP inside), with /etc/resolv.conf of its own naming HostIP as its resolver.
type Netns struct {
	Name           string
	HostIP, NSIP   string
	ResolvConfPath string // /etc/netns/<name>/resolv.conf: /etc/resolv.conf inside (ip-netns(8))

	hostIf string
	etcDir string
}

// NewNetns creates a namespace with a random name; Close removes it. On error nothing is left.
func NewNetns(ctx context.Context) (n *Netns, err error) {
	id := rand.IntN(1 << 16)
	n = &Netns{
		Name:   fmt.Sprintf("ferryvn%d", id),
		HostIP: fmt.Sprintf("10.%d.%d.1", 200+id%50, id%250),
		NSIP:   fmt.Sprintf("10.%d.%d.2", 200+id%50, id%250),
		hostIf: fmt.Sprintf("fvh%d", id),
		etcDir: filepath.Join("/etc/netns", fmt.Sprintf("ferryvn%d", id)),
	}
	n.ResolvConfPath = filepath.Join(n.etcDir, "resolv.conf")
	nsIf := fmt.Sprintf("fvn%d", id)
	defer func() {
		if err != nil {
			n.Close()
			err = fmt.Errorf("network namespace %s: %w", n.Name, err)
		}
	}()
	for _, args := range [][]string{
		{"ip", "netns", "add", n.Name},
		{"ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", nsIf},
		{"ip", "link", "set", nsIf, "netns", n.Name},
		{"ip", "addr", "add", n.HostIP + "/30", "dev", n.hostIf},
		{"ip", "link", "set", n.hostIf, "up"},
		{"ip", "netns", "exec", n.Name, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", n.Name, "ip", "addr", "add", n.NSIP + "/30", "dev", nsIf},
		{"ip", "netns", "exec", n.Name, "ip", "link", "set", nsIf, "up"},
	} {
		if _, err := run(ctx, args...); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(n.etcDir, 0o755); err != nil {
		return nil, err
	}
	// The namespace's own resolver configuration, as a laptop's would be before Ferry.
	if err := os.WriteFile(n.ResolvConfPath, []byte("# the namespace's resolvers\nnameserver "+n.HostIP+"\noptions timeout:2\n"), 0o644); err != nil {
		return nil, err
	}
	return n, nil
}

// Close removes the namespace, the host's end of the veth pair and /etc/netns/<name>.
func (n *Netns) Close() error {
	_ = exec.Command("ip", "netns", "del", n.Name).Run()
	_ = exec.Command("ip", "link", "del", n.hostIf).Run() // gone with the namespace, normally
	return os.RemoveAll(n.etcDir)
}

// Command returns args[0] with args[1:] to be run inside the namespace.
func (n *Netns) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Exec runs args inside the namespace and returns the combined output.
func (n *Netns) Exec(ctx context.Context, args ...string) (string, error) {
	return run(ctx, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Snapshot is the namespace's routes, addresses, links and resolv.conf, to compare before and after.
func (n *Netns) Snapshot(ctx context.Context) (string, error) {
	rc, err := os.ReadFile(n.ResolvConfPath)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-4", "route", "show", "table", "all"},
		{"ip", "-4", "-o", "addr"},
		{"ip", "-o", "link"},
	} {
		out, err := n.Exec(ctx, args...)
		if err != nil {
			return "", err
		}
		b.WriteString(out + "--\n")
	}
	return b.String() + string(rc), nil
}

// Psql runs psql with the connection string conn and one query inside the namespace and returns
// its trimmed output (psql's error text on failure).
func (n *Netns) Psql(ctx context.Context, conn, query string) (string, error) {
	cmd := n.Command(ctx, "psql", conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Login enrolls a new device of user (named device) with the node, keeps its state at dirs and
// points its WireGuard endpoint at the node's port on the host's end of the veth pair (the node
// listens on every address). It returns the state as saved.
func (n *Netns) Login(ctx context.Context, nd *node.Node, dirs client.Dirs, user, device string) (client.State, error) {
	tok, err := nd.EnrollToken(ctx, user)
	if err != nil {
		return client.State{}, fmt.Errorf("vnet: enroll %s: %w", device, err)
	}
	st, err := client.Login(ctx, dirs, tok, device)
	if err != nil {
		return client.State{}, fmt.Errorf("vnet: enroll %s: %w", device, err)
	}
	_, port, err := net.SplitHostPort(st.WireGuardEndpoint)
	if err != nil {
		return client.State{}, fmt.Errorf("vnet: enroll %s: node endpoint %q: %w", device, st.WireGuardEndpoint, err)
	}
	st.WireGuardEndpoint = net.JoinHostPort(n.HostIP, port)
	if err := client.SaveState(dirs, st); err != nil {
		return client.State{}, fmt.Errorf("vnet: enroll %s: %w", device, err)
	}
	return st, nil
}

// Process is a ferry CLI process (a daemon or the helper) running inside a namespace.
type Process struct {
	*netlab.Proc
}

// Start runs argv inside the namespace with EnvRunCLI=1, the client directories dirs and env
// added to this process's environment. argv[0] must be a binary that calls RunCLIIfAsked.
func (n *Netns) Start(dirs client.Dirs, env, argv []string) (*Process, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, argv...)...)
	cmd.Env = append(append(os.Environ(), EnvRunCLI+"=1", client.EnvConfigDir+"="+dirs.Config, client.EnvRuntimeDir+"="+dirs.Runtime), env...)
	p, err := netlab.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("vnet: start %s: %w", strings.Join(argv, " "), err)
	}
	return &Process{p}, nil
}

// StartDaemon runs `ferry daemon --mode virtual-networking` (this executable as the CLI) inside
// the namespace and waits up to a minute until it answers on its control socket and has reached
// the node.
func (n *Netns) StartDaemon(ctx context.Context, dirs client.Dirs) (*Process, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("vnet: start daemon: %w", err)
	}
	p, err := n.Start(dirs, nil, []string{exe, "daemon", "--mode", client.ModeVirtualNetworking})
	if err != nil {
		return nil, err
	}
	if err := p.WaitReady(ctx, dirs, time.Minute); err != nil {
		p.Stop(syscall.SIGKILL, 5*time.Second)
		return nil, err
	}
	return p, nil
}

// WaitReady polls the daemon's control socket at dirs until its status says the node is reachable,
// the process exits, or limit passes.
func (p *Process) WaitReady(ctx context.Context, dirs client.Dirs, limit time.Duration) error {
	ctl := client.NewControl(dirs)
	deadline := time.Now().Add(limit)
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := ctl.Status(sctx)
		cancel()
		if err == nil && st.NodeReachable {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("vnet: daemon exited: %v: %s", p.Err(), p.Output())
		case <-ctx.Done():
			return fmt.Errorf("vnet: daemon not ready: %w", ctx.Err())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vnet: daemon not ready after %v: %v: %s", limit, err, p.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// run runs args and returns the combined output; the error carries it.
func run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
