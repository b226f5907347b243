package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/ferryhq/ferry/netstack"
	"github.com/ferryhq/ferry/resource"
)

// HelperConfig configures the privileged helper.
type HelperConfig struct {
	Socket   string // unix socket path (default DefaultVNetHelperSocket)
	OwnerUID int    // the only user served (besides root); the socket is chowned to it
	StateDir string // where the resolv.conf backup lives (default /var/lib/ferry-vnet-helper)
	Logger   *slog.Logger
}

// ServeVNetHelper runs the privileged helper until ctx ends. It does only this for the user
// OwnerUID: create a TUN device with its address and route for a private subnet and hand its file
// descriptor over the socket (SCM_RIGHTS), and point the OS's DNS for the org domain at Ferry's
// resolver for as long as that client's connection stays open (undone when it closes, whether the
// client exits or is killed). Peers are checked with SO_PEERCRED.
func ServeVNetHelper(ctx context.Context, cfg HelperConfig) error {
	if cfg.Socket == "" {
		cfg.Socket = DefaultVNetHelperSocket
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/ferry-vnet-helper"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if os.Geteuid() != 0 {
		return errors.New("vnet-helper: must run as root (sudo, pkexec or a systemd unit)")
	}
	log := cfg.Logger
	state := Dirs{Config: cfg.StateDir}
	if err := recoverDNS(state, log); err != nil {
		log.Warn("vnet-helper: could not undo an earlier DNS edit", "err", err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o755); err != nil {
		return fmt.Errorf("vnet-helper: %w", err)
	}
	_ = os.Remove(cfg.Socket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Socket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("vnet-helper: listen: %w", err)
	}
	defer os.Remove(cfg.Socket)
	if err := os.Chown(cfg.Socket, cfg.OwnerUID, -1); err != nil {
		ln.Close()
		return fmt.Errorf("vnet-helper: chown socket: %w", err)
	}
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("vnet-helper: chmod socket: %w", err)
	}
	log.Info("vnet-helper: serving", "socket", cfg.Socket, "uid", cfg.OwnerUID)
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	// One client at a time owns DNS (the resolv.conf backup is single).
	var dnsMu sync.Mutex
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vnet-helper: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if err := serveHelperConn(ctx, c, cfg, state, &dnsMu); err != nil {
				log.Warn("vnet-helper: client", "err", err)
			}
		}()
	}
}

func peerUID(c *net.UnixConn) (int, error) {
	sc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := sc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

func serveHelperConn(ctx context.Context, c *net.UnixConn, cfg HelperConfig, state Dirs, dnsMu *sync.Mutex) error {
	uid, err := peerUID(c)
	if err != nil {
		return fmt.Errorf("peer credentials: %w", err)
	}
	if uid != cfg.OwnerUID && uid != 0 {
		_ = json.NewEncoder(c).Encode(helperReply{Error: fmt.Sprintf("vnet-helper serves uid %d only", cfg.OwnerUID)})
		return fmt.Errorf("refused uid %d", uid)
	}
	log := cfg.Logger.With("uid", uid)
	var undo func() error
	defer func() {
		if undo != nil {
			if err := undo(); err != nil {
				log.Warn("vnet-helper: restore DNS", "err", err)
			}
			dnsMu.Unlock()
		}
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 4096)
	for sc.Scan() {
		var req helperRequest
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return fmt.Errorf("bad request: %w", err)
		}
		switch req.Op {
		case "tun":
			dev, name, err := helperTUN(ctx, req)
			if err != nil {
				_ = json.NewEncoder(c).Encode(helperReply{Error: err.Error()})
				continue
			}
			b, _ := json.Marshal(helperReply{Name: name})
			_, _, err = c.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(dev.File().Fd())), nil)
			// Our copy goes: the client's descriptor keeps the interface alive, and its exit
			// (even kill -9) removes the interface with its address and route.
			dev.Close()
			if err != nil {
				return fmt.Errorf("send TUN: %w", err)
			}
			log.Info("vnet-helper: TUN handed over", "name", name, "subnet", req.Subnet)
		case "dns":
			server, err := netip.ParseAddr(req.Server)
			if err != nil || req.Domain == "" || req.Interface == "" {
				_ = json.NewEncoder(c).Encode(helperReply{Error: "dns: give interface, server and domain"})
				continue
			}
			if undo != nil {
				_ = json.NewEncoder(c).Encode(helperReply{Error: "dns: already configured on this connection"})
				continue
			}
			if !dnsMu.TryLock() {
				_ = json.NewEncoder(c).Encode(helperReply{Error: "dns: another ferry client holds the DNS configuration"})
				continue
			}
			u, err := configureDNS(ctx, state, dnsSpec{Interface: req.Interface, Server: server, Domain: req.Domain}, log)
			if err != nil {
				dnsMu.Unlock()
				_ = json.NewEncoder(c).Encode(helperReply{Error: err.Error()})
				continue
			}
			undo = u
			_ = json.NewEncoder(c).Encode(helperReply{})
		default:
			_ = json.NewEncoder(c).Encode(helperReply{Error: fmt.Sprintf("unknown op %q", req.Op)})
		}
	}
	return nil
}

func helperTUN(ctx context.Context, req helperRequest) (tun.Device, string, error) {
	subnet, err := netip.ParsePrefix(req.Subnet)
	if err != nil {
		return nil, "", fmt.Errorf("tun: subnet %q: %w", req.Subnet, err)
	}
	if err := allowedSubnet(subnet); err != nil {
		return nil, "", fmt.Errorf("tun: %w", err)
	}
	subnet = subnet.Masked()
	mtu := req.MTU
	if mtu == 0 {
		mtu = netstack.TUNMTU
	}
	if mtu < 1280 || mtu > 65535 {
		return nil, "", fmt.Errorf("tun: MTU %d out of range 1280..65535", mtu)
	}
	if req.Name != "" && (len(req.Name) >= unix.IFNAMSIZ || !validIfName(req.Name)) {
		return nil, "", fmt.Errorf("tun: bad interface name %q", req.Name)
	}
	dev, err := netstack.OpenTUN(ctx, netstack.TUNConfig{Name: req.Name, Addr: resource.TUNAddress(subnet), Subnet: subnet, MTU: mtu})
	if err != nil {
		return nil, "", err
	}
	name, _ := dev.Name()
	return dev, name, nil
}

func validIfName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// openTUNViaHelper asks the helper for a TUN device; the connection stays open for the daemon's
// lifetime (closing it makes the helper undo the DNS configuration).
func openTUNViaHelper(ctx context.Context, sock string, cfg netstack.TUNConfig) (tun.Device, dnsConfigurer, error) {
	var dl net.Dialer
	nc, err := dl.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("virtual networking needs root or the privileged helper, which is not reachable at %s (start it with `sudo ferry vnet-helper --user $(id -u)`, or set %s): %w", sock, EnvVNetHelper, err)
	}
	c := nc.(*net.UnixConn)
	fail := func(err error) (tun.Device, dnsConfigurer, error) { c.Close(); return nil, nil, err }
	b, _ := json.Marshal(helperRequest{Op: "tun", Name: cfg.Name, Subnet: cfg.Subnet.String(), MTU: cfg.MTU})
	if _, err := c.Write(append(b, '\n')); err != nil {
		return fail(fmt.Errorf("vnet-helper: %w", err))
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return fail(fmt.Errorf("vnet-helper: read reply: %w", err))
	}
	var rep helperReply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		return fail(fmt.Errorf("vnet-helper: bad reply: %w", err))
	}
	if rep.Error != "" {
		return fail(fmt.Errorf("vnet-helper: %s", rep.Error))
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fail(errors.New("vnet-helper: no file descriptor in the reply"))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return fail(errors.New("vnet-helper: no file descriptor in the reply"))
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(fds[0])
	if err != nil {
		unix.Close(fds[0])
		return fail(fmt.Errorf("vnet-helper: use TUN: %w", err))
	}
	_ = c.SetReadDeadline(time.Time{})
	rd := bufio.NewReader(c)
	conf := func(ctx context.Context, spec dnsSpec, log *slog.Logger) (func() error, error) {
		b, _ := json.Marshal(helperRequest{Op: "dns", Interface: spec.Interface, Server: spec.Server.String(), Domain: spec.Domain})
		if _, err := c.Write(append(b, '\n')); err != nil {
			return nil, fmt.Errorf("vnet-helper: %w", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := rd.ReadBytes('\n')
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			return nil, fmt.Errorf("vnet-helper: %w", err)
		}
		var rep helperReply
		if err := json.Unmarshal(line, &rep); err != nil || rep.Error != "" {
			return nil, fmt.Errorf("vnet-helper: dns: %s", rep.Error)
		}
		return c.Close, nil // closing the connection makes the helper restore DNS
	}
	return &helperDevice{Device: dev, conn: c}, conf, nil
}

// helperDevice closes the helper connection with the device (if DNS was never configured).
type helperDevice struct {
	tun.Device
	conn *net.UnixConn
}

func (h *helperDevice) Close() error {
	err := h.Device.Close()
	_ = h.conn.Close()
	return err
}
