package client

import (
	"context"
	"slices"
	"time"

	"github.com/ferryhq/ferry/api"
)

// followInterval is how often the daemon compares its connected resources with the node's catalog:
// a deleted or no-longer-granted resource stops listening, a moved one listens at its new address,
// within about this time.
const followInterval = 2 * time.Second

// followCatalog keeps connected resources in line with what the node says until the daemon closes.
// While the node is unreachable nothing changes. Each poll is also the watchdog's probe of the node
// (reconnect.go).
func (d *Daemon) followCatalog() {
	defer d.wg.Done()
	t := time.NewTicker(followInterval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		via := d.currentNode()
		ctx, cancel := context.WithTimeout(d.ctx, d.link.probeTimeout())
		rs, err := d.resources(ctx)
		cancel()
		if d.ctx.Err() != nil {
			return
		}
		if err != nil && d.currentNode() != via {
			continue // asked of a node left since: says nothing of the node in use
		}
		d.noteProbe(err)
		if err == nil {
			d.account.noteReachable()
			d.follow(rs)
		} else {
			// Off the probe loop: the enrollment endpoint may be as unreachable as the tunnel.
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				d.checkAccount(d.ctx)
			}()
		}
	}
}

// follow applies the node's current resource list to the listeners.
func (d *Daemon) follow(rs []api.Resource) {
	byName := make(map[string]api.Resource, len(rs))
	for _, r := range rs {
		byName[r.Name] = r
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := false
	for name, l := range d.listeners {
		r, ok := byName[name]
		switch {
		case !ok:
			_ = l.ln.Close()
			delete(d.listeners, name)
			d.dropRoute(name)
			d.state.Connected = slices.DeleteFunc(d.state.Connected, func(s string) bool { return s == name })
			changed = true
			d.log.Warn("resource is no longer available to you: stopped listening", "resource", name, "address", l.res.LoopbackAddress)
		case r.LoopbackAddress != l.res.LoopbackAddress:
			ln, err := listenLoopback(r.LoopbackAddress)
			if err != nil {
				d.log.Error("resource moved but its new address is busy; keeping the old one", "resource", name, "address", r.LoopbackAddress, "err", err)
				// Still this resource: connections at the old address go where it is now, not to
				// a resource that took over its old virtual networking address.
				kept := r
				kept.LoopbackAddress = l.res.LoopbackAddress
				l.res, l.fallback = kept, d.wantMode(r) == ModeVirtualNetworking
				continue
			}
			_ = l.ln.Close()
			nl := &listener{res: r, ln: ln, fallback: d.wantMode(r) == ModeVirtualNetworking}
			d.listeners[name] = nl
			d.wg.Add(1)
			go d.acceptLoop(nl)
			d.log.Info("resource moved", "resource", name, "from", l.res.LoopbackAddress, "to", r.LoopbackAddress)
		default:
			// A virtual-networking resource on a loopback listener is a fallback, whether it was
			// connected so or an administrator changed its mode since (followModes moves it once
			// there is a TUN).
			l.res, l.fallback = r, d.wantMode(r) == ModeVirtualNetworking
		}
	}
	if d.followModes(byName) {
		changed = true
	}
	if d.vn != nil {
		d.vn.setRecords(rs)
		if d.vn.tunGone() {
			go d.vn.ts.Close() // watchVNet then falls back to loopback
		}
	}
	d.retryVNet()
	var connected []api.Resource
	for name := range d.listeners {
		connected = append(connected, byName[name])
	}
	for _, name := range d.vnNames() {
		if r, ok := byName[name]; ok {
			connected = append(connected, r)
		}
	}
	d.ensureRoutes(connected)
	if changed {
		if err := SaveState(d.dirs, d.state); err != nil {
			d.log.Warn("could not save connected resources", "err", err)
		}
	}
}
