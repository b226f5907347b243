package client

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/ferryhq/ferry/tunnel"
)

// Watchdog timings. The catalog poll (followInterval) is the probe: an API request to the node
// through the tunnel.
const (
	probeTimeoutUp   = 2 * followInterval // a probe while the node answers
	probeTimeoutDown = followInterval     // a probe while it does not: fail fast, probe again soon
	// dialTimeoutDown bounds a dial through the tunnel while the node is known to be unreachable, so
	// a local client gets its FATAL 08001 in seconds; it still leaves time for a handshake with a
	// node that has just come back.
	dialTimeoutDown = 3 * time.Second
	// slowDial is how long a dial through the tunnel may take before a new handshake is forced: on
	// a working link it takes one round trip.
	slowDial = 750 * time.Millisecond
	// minKickInterval is the least time between two forced handshakes.
	minKickInterval = 250 * time.Millisecond
)

// nodeLink is the daemon's view of the node's reachability. A failed probe (or dial) marks the node
// unreachable and forces a new WireGuard handshake, after re-resolving the node's endpoint: a
// restarted node has lost the session keys, and wireguard-go alone would keep sending under them
// for up to 15 s before it tries a handshake. Forced handshakes follow the probes (about every
// followInterval) and the local connections that arrive, at most one per minKickInterval.
type nodeLink struct {
	peer     tunnel.Peer // the node in use; Endpoint follows re-resolution
	endpoint string      // the node in use's WireGuard endpoint as named (host:port), re-resolved

	mu       sync.Mutex
	down     bool
	since    time.Time // when down became true
	lastKick time.Time
}

func (l *nodeLink) isDown() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.down
}

func (l *nodeLink) probeTimeout() time.Duration {
	if l.isDown() {
		return probeTimeoutDown
	}
	return probeTimeoutUp
}

func (l *nodeLink) dialTimeout() time.Duration {
	if l.isDown() {
		return dialTimeoutDown
	}
	return dialTimeout
}

// noteProbe records the outcome of a request to the node through the tunnel; a failure forces a
// new handshake. Only timeouts count as failures: a refusal (RST) comes from a node that answers.
func (d *Daemon) noteProbe(err error) {
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		err = nil
	}
	l := &d.link
	l.mu.Lock()
	was := l.down
	if err == nil {
		l.down = false
		down := time.Since(l.since)
		l.mu.Unlock()
		if was {
			d.log.Info("node reachable again", "node", d.nodeLabel(), "unreachable_for", down.Round(time.Millisecond))
		}
		return
	}
	l.down = true
	if !was {
		l.since = time.Now()
	}
	l.mu.Unlock()
	if !was {
		d.log.Warn("node unreachable: reconnecting", "node", d.nodeLabel(), "err", err)
	}
	d.kickLink()
}

// kickLink re-resolves the node's endpoint (its address may have changed across a restart) and
// starts a new handshake, at most once per minKickInterval.
func (d *Daemon) kickLink() {
	l := &d.link
	l.mu.Lock()
	if time.Since(l.lastKick) < minKickInterval {
		l.mu.Unlock()
		d.log.Debug("handshake with the node not forced: one was forced just before")
		return
	}
	l.lastKick = time.Now()
	peer, named := l.peer, l.endpoint
	l.mu.Unlock()

	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Second)
	ep, err := resolveEndpoint(ctx, named)
	cancel()
	if err == nil && ep != peer.Endpoint {
		// Under l.mu, as switchTo changes the peer: the endpoint of a node left in between is
		// never written back (it would take the route from the node now in use).
		l.mu.Lock()
		if l.peer.PublicKey == peer.PublicKey {
			peer.Endpoint = ep
			if err := d.tun.AddPeer(peer); err != nil {
				d.log.Warn("could not update the node's endpoint", "endpoint", ep, "err", err)
			} else {
				d.log.Info("node endpoint changed", "endpoint", ep)
				l.peer = peer
			}
		}
		l.mu.Unlock()
	}
	if err := d.tun.Rehandshake(peer.PublicKey); err != nil {
		d.log.Debug("could not start a handshake with the node", "err", err)
		return
	}
	d.log.Debug("new handshake with the node started", "endpoint", peer.Endpoint)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
