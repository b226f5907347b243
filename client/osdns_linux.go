package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/godbus/dbus/v5"
)

// resolvConfPath is the resolver configuration the system's libc reads (resolv.conf(5)).
const resolvConfPath = "/etc/resolv.conf"

// dnsEnv is the OS access of the DNS configuration, injected so that tests edit temp files and
// never the machine's /etc.
type dnsEnv struct {
	resolvConf string // the resolver configuration edited without systemd-resolved (/etc/resolv.conf)
	stateDir   string // where the record of that edit is kept for crash recovery
	owner      int    // the uid the record must belong to (this process's euid)
	resolved   bool   // try systemd-resolved over D-Bus first
	// noEdit refuses the resolv.conf edit: it has no per-domain routing, so every name the machine
	// looks up would go to the resolver on the TUN, that is to whoever holds the TUN.
	noEdit bool
}

// osDNSEnv is the real machine's: /etc/resolv.conf, the record in stateDir, resolved when running.
func osDNSEnv(stateDir string) dnsEnv {
	return dnsEnv{resolvConf: resolvConfPath, stateDir: stateDir, owner: os.Geteuid(), resolved: true}
}

// configureDNS tells the OS to send queries for the org domain to Ferry's resolver. With
// systemd-resolved on the system bus it sets per-link DNS and the routing domain ~<domain> on the
// TUN (D-Bus org.freedesktop.resolve1.Manager SetLinkDNS/SetLinkDomains, see
// org.freedesktop.resolve1(5)); resolved forgets them itself when the TUN disappears, so a crash
// leaves nothing behind. Without resolved it edits /etc/resolv.conf in place (it may be a bind
// mount or a symlink), putting Ferry's resolver first (it forwards other names to the previous
// nameservers); the original is kept in the config directory and put back by the returned undo,
// or by recoverDNS at the next start after a crash.
func configureDNS(ctx context.Context, dirs Dirs, spec dnsSpec, log *slog.Logger) (undo func() error, err error) {
	return configureDNSIn(ctx, osDNSEnv(dirs.Config), spec, log)
}

func configureDNSIn(ctx context.Context, env dnsEnv, spec dnsSpec, log *slog.Logger) (undo func() error, err error) {
	if env.resolved {
		if undo, err := configureResolved(ctx, spec); err == nil {
			log.Info("DNS: systemd-resolved routes the org domain to Ferry", "link", spec.Interface, "domain", spec.Domain)
			return undo, nil
		} else if !errors.Is(err, errNoResolved) {
			return nil, err
		}
	}
	if env.noEdit {
		return nil, errResolvConfRefused
	}
	return editResolvConf(env, spec, log)
}

// errResolvConfRefused is the helper's answer without systemd-resolved unless its administrator
// allowed the resolv.conf edit.
var errResolvConfRefused = errors.New("dns: systemd-resolved is not running, and editing " + resolvConfPath +
	" instead would send every name this machine looks up to this user's ferry: the helper does it only when started with --allow-resolv-conf (for a single-user machine)")

var errNoResolved = errors.New("systemd-resolved is not running")

const (
	resolvedBus  = "org.freedesktop.resolve1"
	resolvedPath = "/org/freedesktop/resolve1"
	resolvedMgr  = "org.freedesktop.resolve1.Manager"
)

func configureResolved(ctx context.Context, spec dnsSpec) (func() error, error) {
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return nil, errNoResolved
	}
	var has bool
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, resolvedBus).Store(&has); err != nil || !has {
		conn.Close()
		return nil, errNoResolved
	}
	var ifi *net.Interface
	if spec.Index != 0 { // the helper's TUN: by the index it had when created, and still named so
		ifi, err = net.InterfaceByIndex(spec.Index)
		if err == nil && ifi.Name != spec.Interface {
			err = fmt.Errorf("index %d is %s now: the TUN is gone", spec.Index, ifi.Name)
		}
	} else {
		ifi, err = net.InterfaceByName(spec.Interface)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("DNS: find interface %s: %w", spec.Interface, err)
	}
	obj := conn.Object(resolvedBus, resolvedPath)
	type linkDNS struct {
		Family  int32
		Address []byte
	}
	type linkDomain struct {
		Domain      string
		RoutingOnly bool
	}
	idx := int32(ifi.Index)
	if err := obj.CallWithContext(ctx, resolvedMgr+".SetLinkDNS", 0, idx, []linkDNS{{syscall.AF_INET, spec.Server.AsSlice()}}).Err; err != nil {
		conn.Close()
		return nil, fmt.Errorf("DNS: systemd-resolved SetLinkDNS: %w", err)
	}
	dom := strings.TrimSuffix(spec.Domain, ".")
	if err := obj.CallWithContext(ctx, resolvedMgr+".SetLinkDomains", 0, idx, []linkDomain{{dom, true}}).Err; err != nil {
		_ = obj.Call(resolvedMgr+".RevertLink", 0, idx).Err
		conn.Close()
		return nil, fmt.Errorf("DNS: systemd-resolved SetLinkDomains: %w", err)
	}
	// Only the org domain goes to Ferry, never the default route (resolved ≥ 240; older ones
	// lack the call and use routing domains alone).
	_ = obj.CallWithContext(ctx, resolvedMgr+".SetLinkDefaultRoute", 0, idx, false).Err
	return func() error {
		defer conn.Close()
		if err := obj.Call(resolvedMgr+".RevertLink", 0, idx).Err; err != nil {
			return fmt.Errorf("DNS: systemd-resolved RevertLink: %w", err)
		}
		return nil
	}, nil
}

// resolvBackup records a managed /etc/resolv.conf edit so it can be undone after a crash.
type resolvBackup struct {
	// Path is where the edit was made. Written for older versions' sake and never used: the only
	// file restored is the environment's resolv.conf (a record naming another path, such as
	// /etc/passwd, must not make root write there).
	Path     string `json:"path"`
	Original []byte `json:"original"`
	Written  []byte `json:"written"`
}

func resolvBackupPath(env dnsEnv) string {
	return filepath.Join(env.stateDir, "vnet-resolv.conf.json")
}

const resolvMarker = "# Managed by Ferry (virtual networking mode); restored when the ferry daemon stops.\n"

func editResolvConf(env dnsEnv, spec dnsSpec, log *slog.Logger) (func() error, error) {
	orig, err := os.ReadFile(env.resolvConf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("DNS: read %s: %w", env.resolvConf, err)
	}
	var b bytes.Buffer
	b.WriteString(resolvMarker)
	fmt.Fprintf(&b, "nameserver %s\n", spec.Server)
	kept := 1
	for _, line := range strings.SplitAfter(string(orig), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "nameserver" {
			// libc uses at most 3 (MAXNS); later ones are fallbacks should Ferry's stop answering.
			if kept >= 3 {
				continue
			}
			kept++
		}
		b.WriteString(line)
	}
	if !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteByte('\n')
	}
	bk := resolvBackup{Path: env.resolvConf, Original: orig, Written: b.Bytes()}
	if err := writeBackup(env, bk); err != nil {
		return nil, err
	}
	if err := writeInPlace(env.resolvConf, bk.Written); err != nil {
		_ = os.Remove(resolvBackupPath(env))
		return nil, fmt.Errorf("DNS: write %s: %w", env.resolvConf, err)
	}
	log.Info("DNS: "+env.resolvConf+" points to Ferry's resolver (no systemd-resolved)", "resolver", spec.Server)
	return func() error { return restoreResolvConf(env, bk, log) }, nil
}

func writeBackup(env dnsEnv, bk resolvBackup) error {
	if err := os.MkdirAll(env.stateDir, 0o700); err != nil {
		return fmt.Errorf("DNS: %w", err)
	}
	data, _ := json.Marshal(bk)
	p := resolvBackupPath(env)
	_ = os.Remove(p + ".tmp")
	f, err := os.OpenFile(p+".tmp", os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("DNS: save resolv.conf backup: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(p+".tmp", p)
	}
	if err != nil {
		return fmt.Errorf("DNS: save resolv.conf backup: %w", err)
	}
	return nil
}

// writeInPlace truncates and rewrites the file without replacing it (a rename would fail on a bind
// mount and replace a symlink).
func writeInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// restoreResolvConf puts the original back into the environment's resolv.conf (never the record's
// Path) when the file still holds what Ferry wrote; when something else has rewritten it since (a
// DHCP client, an administrator), that newer content is left alone.
func restoreResolvConf(env dnsEnv, bk resolvBackup, log *slog.Logger) error {
	path := env.resolvConf
	cur, err := os.ReadFile(path)
	switch {
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("DNS: read %s: %w", path, err)
	case bytes.Equal(cur, bk.Written):
		if err := writeInPlace(path, bk.Original); err != nil {
			return fmt.Errorf("DNS: restore %s: %w", path, err)
		}
		log.Info("DNS: restored " + path)
	default:
		log.Warn("DNS: " + path + " was changed by something else since Ferry edited it; left as it is")
	}
	if err := os.Remove(resolvBackupPath(env)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("DNS: remove backup: %w", err)
	}
	return nil
}

// recoverDNS undoes a resolv.conf edit left by a daemon that did not stop cleanly.
func recoverDNS(dirs Dirs, log *slog.Logger) error { return recoverDNSIn(osDNSEnv(dirs.Config), log) }

// recoverDNSIn reads the record of an earlier edit (a regular file, not a symlink, owned by
// env.owner and writable by nobody else; anything else is refused and left alone) and restores
// the environment's resolv.conf from it.
func recoverDNSIn(env dnsEnv, log *slog.Logger) error {
	p := resolvBackupPath(env)
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("DNS: read backup %s: %w", p, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("DNS: read backup %s: %w", p, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || st == nil || int(st.Uid) != env.owner || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("DNS: backup %s is not a regular file owned by uid %d and writable only by it: not used (remove it)", p, env.owner)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return fmt.Errorf("DNS: read backup %s: %w", p, err)
	}
	var bk resolvBackup
	if err := json.Unmarshal(data, &bk); err != nil {
		_ = os.Remove(p)
		return fmt.Errorf("DNS: backup %s is damaged; removed it", p)
	}
	if bk.Path != "" && bk.Path != env.resolvConf {
		log.Warn("DNS: the backup names another file than "+env.resolvConf+"; only "+env.resolvConf+" is restored", "named", bk.Path)
	}
	log.Info("DNS: undoing the resolv.conf edit of an earlier run that did not stop cleanly")
	return restoreResolvConf(env, bk, log)
}
