package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/resource"
)

// Per-resource connectivity modes. Each resource is served in its own mode (resource.Mode with the
// org's default), unless this client was told one mode for all (WithMode): loopback resources on
// their loopback address, virtual-networking resources on their VN address and DNS alias through
// the TUN, both at once in one daemon. The TUN is brought up only when some resource wants it; when
// it cannot be had (no root, no helper), virtual-networking resources are served on their loopback
// address instead and the daemon says why once (Status.VNUnavailable), never failing to start.

// vnRetry is the least time between two attempts to bring up virtual networking after one failed
// (a connect of a virtual-networking resource tries again, e.g. once the helper has been started).
const vnRetry = 10 * time.Second

// ModeLabel is how a status row says how the client serves the resource now (the "Mode" column of
// `ferry status` and of the app): "virtual networking", "loopback", or "loopback (no TUN helper)"
// for a virtual-networking resource served on loopback because the TUN could not be had.
func ModeLabel(r ResourceStatus) string {
	switch {
	case r.Serving == ModeVirtualNetworking:
		return "virtual networking"
	case r.Fallback:
		return "loopback (no TUN helper)"
	case r.Serving == ModeLoopback:
		return "loopback"
	}
	return r.ConnectivityMode
}

// wantMode is the mode r is to be served in: this client's override, else the resource's own mode
// with the org's default for a resource that has none. Called with d.mu held.
func (d *Daemon) wantMode(r api.Resource) string {
	if d.opts.mode != "" {
		return d.opts.mode
	}
	m := resource.Resource{ConnectivityMode: r.ConnectivityMode}
	return m.Mode(d.settings.ConnectivityMode)
}

// row is r's status row as this daemon serves it now (or would on connect): r as the node says it
// is now (health included), the address where it is served. Called with d.mu held.
func (d *Daemon) row(r api.Resource) ResourceStatus {
	st := ResourceStatus{Resource: r, Address: r.LoopbackAddress, Serving: ModeLoopback}
	if l, ok := d.listeners[r.Name]; ok {
		st.Connected = true
		st.Address = l.res.LoopbackAddress // where it listens (follow moves it)
		st.Fallback = l.fallback
		st.Node = d.nodeFor(l.res)
		return st
	}
	wantVN := d.wantMode(r) == ModeVirtualNetworking
	served := r
	if d.vn != nil {
		if vr, on := d.vn.isConnected(r.Name); on {
			served, st.Connected = vr, true
			wantVN = true
		}
	}
	switch {
	case wantVN && d.vn != nil:
		st.Address, st.Serving = d.vn.address(served), ModeVirtualNetworking
	case wantVN:
		st.Fallback = true
	}
	if st.Connected {
		st.Node = d.nodeFor(served)
	}
	return st
}

// readSettings reads the org's network settings from the node and keeps them.
func (d *Daemon) readSettings(ctx context.Context) (api.Settings, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	s, err := d.api.Settings(ctx)
	if err != nil {
		return s, fmt.Errorf("read the org's network settings from ferry-node: %w", err)
	}
	d.mu.Lock()
	d.settings = s
	d.mu.Unlock()
	return s, nil
}

// startVNet reads the org's settings and brings up virtual networking when some resource (or this
// client's override) wants it. Nothing here stops the daemon from starting: without the settings,
// resources are served on loopback until a connect tries again; without a TUN, see ensureVNet.
func (d *Daemon) startVNet(ctx context.Context) {
	if d.opts.mode == ModeLoopback {
		return
	}
	if _, err := d.readSettings(ctx); err != nil {
		d.log.Warn("serving every resource on loopback for now: could not read the org's connectivity mode", "err", err)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	rs, err := d.resources(rctx)
	cancel()
	if err != nil {
		d.log.Warn("could not list resources", "err", err)
	}
	d.mu.Lock()
	need := d.opts.mode == ModeVirtualNetworking || (err != nil && d.settings.ConnectivityMode == ModeVirtualNetworking) ||
		slices.ContainsFunc(rs, func(r api.Resource) bool { return d.wantMode(r) == ModeVirtualNetworking })
	d.mu.Unlock()
	if need {
		d.ensureVNet(ctx)
	}
}

// ensureVNet brings up virtual networking unless it is up, or an attempt failed less than vnRetry
// ago. On failure it records why (Status.VNUnavailable) and logs it once.
func (d *Daemon) ensureVNet(ctx context.Context) {
	d.vnUp.Lock()
	defer d.vnUp.Unlock()
	d.mu.Lock()
	up, s := d.vn != nil, d.settings
	d.mu.Unlock()
	if up || (!d.vnLast.IsZero() && time.Since(d.vnLast) < vnRetry) || d.ctx.Err() != nil {
		return
	}
	d.vnLast = time.Now()
	var err error
	if s.VNSubnet == "" {
		s, err = d.readSettings(ctx)
	}
	var v *vnet
	if err == nil {
		vctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
		v, err = d.newVNet(vctx, s)
		cancel()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		why := vnUnavailable(err, s)
		if d.vnWhy != why {
			d.log.Warn(why)
		}
		d.vnWhy = why
		return
	}
	if d.ctx.Err() != nil { // closed meanwhile
		v.close()
		return
	}
	d.vn, d.vnWhy = v, ""
	d.wg.Add(1)
	go d.watchVNet(v)
}

// watchVNet waits until v's TUN goes away while the daemon runs (the helper stopped and deleted it,
// the interface was removed) and then serves v's resources on loopback as a fallback, says why, and
// lets retryVNet bring virtual networking up again, instead of reporting them served at addresses
// that no longer lead anywhere.
func (d *Daemon) watchVNet(v *vnet) {
	defer d.wg.Done()
	select {
	case <-d.ctx.Done():
		return
	case <-v.ts.Done():
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.vn != v || d.ctx.Err() != nil {
		return
	}
	d.vn = nil
	d.vnWhy = vnUnavailable(errors.New("the TUN device went away (was the helper stopped?)"), d.settings)
	d.log.Warn(d.vnWhy)
	for _, r := range v.list() {
		v.disconnect(r.Name)
		if _, err := d.listen(r, true); err != nil {
			d.state.Connected = slices.DeleteFunc(d.state.Connected, func(s string) bool { return s == r.Name })
			d.log.Error("virtual networking went away and the resource's loopback address is busy: stopped serving it", "resource", r.Name, "err", err)
		}
	}
	go v.close() // DNS undone, resolver stopped; off d.mu
}

// retryVNet tries again, in the background and at most every vnRetry, to bring up virtual
// networking while a connected resource is served on loopback for want of it (an administrator
// changed its mode, or the helper was not running yet): once it is up, the next poll moves the
// resource (followModes). Called with d.mu held.
func (d *Daemon) retryVNet() {
	if d.vn != nil || d.opts.mode == ModeLoopback || d.ctx.Err() != nil {
		return
	}
	fallback := false
	for _, l := range d.listeners {
		fallback = fallback || l.fallback
	}
	if !fallback || !d.vnTrying.CompareAndSwap(false, true) {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer d.vnTrying.Store(false)
		d.ensureVNet(d.ctx)
	}()
}

// vnUnavailable is the one message a person gets when virtual networking cannot be had: what
// happened, what Ferry does instead, and the command that fixes it.
func vnUnavailable(err error, s api.Settings) string {
	fix := "run ferry as root"
	if runtime.GOOS == "linux" {
		subnet, domain := s.VNSubnet, s.DNSDomain
		if subnet == "" {
			subnet = resource.DefaultVNSubnet.String()
		}
		if domain == "" {
			domain = "ferry.internal"
		}
		fix = fmt.Sprintf("start the privileged helper with `sudo ferry vnet-helper --user $(id -u) --subnet %s --domain %s` (or install its systemd unit, see the README), then connect them again", subnet, domain)
	} else if runtime.GOOS == "windows" {
		fix = "run ferry as Administrator"
	}
	return fmt.Sprintf("Virtual networking is not available on this device, so resources set to virtual networking are served on loopback addresses instead (their DNS aliases do not resolve here). To use virtual networking, %s. (%v)", fix, err)
}

// serve is Connect once r is known: r's row when it is served already, else r served in its mode.
// A resource served on loopback as a fallback is moved to virtual networking now when the TUN has
// come up since (the helper was started, as the message says), so the address connect prints is
// the one it is served at, not one that the next poll closes. Called with d.mu held.
func (d *Daemon) serve(r api.Resource) (ResourceStatus, error) {
	if l, ok := d.listeners[r.Name]; ok && l.fallback && d.vn != nil && d.wantMode(r) == ModeVirtualNetworking {
		if _, err := d.vnConnect(r); err != nil {
			d.log.Warn("could not move resource to virtual networking", "resource", r.Name, "err", err)
			return d.row(r), nil
		}
		_ = l.ln.Close()
		delete(d.listeners, r.Name)
		d.log.Info("resource moved to virtual networking", "resource", r.Name, "address", d.vn.address(r))
		return d.row(r), nil
	}
	if st := d.row(r); st.Connected {
		return st, nil
	}
	return d.connectMode(r)
}

// connectMode serves r in its mode; called with d.mu held. A virtual-networking resource without a
// TUN is served on its loopback address (fallback).
func (d *Daemon) connectMode(r api.Resource) (ResourceStatus, error) {
	if d.wantMode(r) == ModeVirtualNetworking && d.vn != nil {
		return d.vnConnect(r)
	}
	return d.listen(r, d.wantMode(r) == ModeVirtualNetworking)
}

// listenLoopback listens on addr, which must be a loopback IP and port as the node assigns them:
// whatever the catalog says, the client never opens a resource to the network ("0.0.0.0:5432", a LAN
// address) or listens on a name.
func listenLoopback(addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Unmap().IsLoopback() {
		return nil, fmt.Errorf("%w: %q (ask an administrator to correct the resource's address)", errNotLoopback, addr)
	}
	return net.Listen("tcp", ap.String())
}

// errNotLoopback refuses a resource's loopback address that is not a loopback IP and port.
var errNotLoopback = errors.New("not a loopback IP address and port, refusing to listen there")

// listen serves r on its loopback address; called with d.mu held.
func (d *Daemon) listen(r api.Resource, fallback bool) (ResourceStatus, error) {
	ln, err := listenLoopback(r.LoopbackAddress)
	if errors.Is(err, errNotLoopback) {
		return ResourceStatus{}, fmt.Errorf("connect %s: %w", r.Name, err)
	}
	if err != nil {
		return ResourceStatus{}, fmt.Errorf("connect %s: listen on %s (is another program using that port? an administrator can set a port override): %w", r.Name, r.LoopbackAddress, err)
	}
	l := &listener{res: r, ln: ln, fallback: fallback}
	d.listeners[r.Name] = l
	d.wg.Add(1)
	go d.acceptLoop(l)
	d.remember(r.Name)
	d.log.Info("resource connected", "resource", r.Name, "address", r.LoopbackAddress, "mode", ModeLabel(d.row(r)))
	return d.row(r), nil
}

// remember keeps name among the connected resources restored at the next start; d.mu held.
func (d *Daemon) remember(name string) {
	if !slices.Contains(d.state.Connected, name) {
		d.state.Connected = append(d.state.Connected, name)
		if err := SaveState(d.dirs, d.state); err != nil {
			d.log.Warn("could not save connected resources", "err", err)
		}
	}
}

// followModes moves connected resources whose mode changed (an administrator's edit, or virtual
// networking that came up after they were served on loopback) and drops virtual-networking ones
// that are gone; called with d.mu held, byName the node's current list.
func (d *Daemon) followModes(byName map[string]api.Resource) (changed bool) {
	if d.vn == nil {
		return false
	}
	for _, vr := range d.vn.list() {
		r, ok := byName[vr.Name]
		switch {
		case !ok:
			d.vn.disconnect(vr.Name)
			d.state.Connected = slices.DeleteFunc(d.state.Connected, func(s string) bool { return s == vr.Name })
			changed = true
			d.log.Warn("resource is no longer available to you: stopped serving it", "resource", vr.Name)
		case d.wantMode(r) != ModeVirtualNetworking:
			if _, err := d.listen(r, false); err != nil {
				d.log.Error("resource changed to loopback mode but its loopback address is busy; keeping it on virtual networking", "resource", r.Name, "err", err)
				continue
			}
			d.vn.disconnect(r.Name)
		case r.VNAddress != vr.VNAddress || r.Subdomain != vr.Subdomain:
			// Moved or renamed: served at its new address under its new alias, or no longer at all
			// when the new address cannot be served (outside the TUN's subnet): its old one may be
			// another resource's by now.
			if _, err := d.vn.connect(r); err != nil {
				d.vn.disconnect(r.Name)
				d.state.Connected = slices.DeleteFunc(d.state.Connected, func(s string) bool { return s == r.Name })
				changed = true
				d.log.Error("resource moved to an address this client cannot serve: stopped serving it; connect it again", "resource", r.Name, "err", err)
			}
		}
	}
	for name, l := range d.listeners {
		r, ok := byName[name]
		if !ok || d.wantMode(r) != ModeVirtualNetworking {
			continue
		}
		if _, err := d.vn.connect(r); err != nil {
			d.log.Warn("could not move resource to virtual networking", "resource", name, "err", err)
			continue
		}
		_ = l.ln.Close()
		delete(d.listeners, name)
		d.log.Info("resource moved to virtual networking", "resource", name, "address", d.vn.address(r))
	}
	return changed
}
