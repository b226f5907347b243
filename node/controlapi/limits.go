package controlapi

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// The node's two HTTP endpoints face clients it cannot trust to be quick or few: the enrollment
// endpoint is on the public internet, and the control API (inside the tunnel) serves every enrolled
// device. Both get the same protection, so that slow or many clients cannot hold the node's file
// descriptors, goroutines or memory:
//
//   - timeouts: the TLS handshake, the request header and the whole request must arrive within
//     http_read_timeout; an answer must be written within http_write_timeout; a kept-alive
//     connection idle for http_idle_timeout is closed. A client that sends one byte every few seconds
//     is cut at the read timeout, however steadily it trickles.
//   - connection caps (connLimiter): at most http_max_conns_per_source connections from one source
//     (an IPv4 address or an IPv6 /64; inside the tunnel, one device); more are closed as soon as
//     they are accepted. At most http_max_conns in all; more wait in the kernel's accept queue, which
//     holds no file descriptor of the node, until one closes.
//   - body size (limitBody): enrollBodyLimit on the enrollment endpoint, maxBody on the control API;
//     a request that declares a larger body gets 413 before it is read, one that sends more than it
//     may is stopped at the limit (400 naming the limit).

// Limits are the endpoints' timeouts and connection caps (the node config's http_* keys).
type Limits struct {
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	MaxConns, MaxConnsPerSource            int
}

// enrollBodyLimit caps enrollment request bodies (an enrollment request is a few hundred bytes).
const enrollBodyLimit = 64 << 10

// maxHeaderBytes caps the request header of both endpoints.
const maxHeaderBytes = 64 << 10

// httpServer returns an http.Server for one of the node's endpoints: h behind the body limit, with
// the configured timeouts, and net/http's own complaints (TLS handshake errors of scanners and
// slow clients) logged at debug level.
func (sv *Server) httpServer(h http.Handler, bodyLimit int64) *http.Server {
	return &http.Server{
		Handler:           limitBody(h, bodyLimit),
		ReadHeaderTimeout: sv.limits.ReadTimeout,
		ReadTimeout:       sv.limits.ReadTimeout,
		WriteTimeout:      sv.limits.WriteTimeout,
		IdleTimeout:       sv.limits.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(sv.log.Handler(), slog.LevelDebug),
	}
}

// enrollServer is the enrollment endpoint's http.Server. It answers one request per connection: an
// enrollment takes one, and a kept-alive connection would let a client that sends a cheap request now
// and then hold its slot of http_max_conns for ever, so that a few sources could keep every device
// from enrolling. Closed after its answer, a connection holds its slot at most the read timeout
// (plus the handling and the write timeout).
func (sv *Server) EnrollServer() *http.Server {
	srv := sv.httpServer(sv.EnrollHandler(), enrollBodyLimit)
	srv.SetKeepAlivesEnabled(false)
	return srv
}

// limitBody refuses a request whose declared body is larger than limit with 413, and stops reading
// any body at limit (the handler's read then fails with *http.MaxBytesError).
func limitBody(h http.Handler, limit int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body of %d bytes is larger than this endpoint's limit of %d bytes", r.ContentLength, limit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		h.ServeHTTP(w, r)
	})
}

// connLimiter is a net.Listener that caps its open connections in all (Accept waits for a free
// slot) and per source (a connection over the source's cap is closed at once).
type connLimiter struct {
	net.Listener
	name      string
	perSource int
	slots     chan struct{} // one per open connection
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	log       *slog.Logger

	mu         sync.Mutex
	bySource   map[netip.Addr]int
	refused    int       // connections refused since the last log line
	lastWarned time.Time // when the last "refused" line was logged
}

// APIServer is the control API's http.Server.
func (sv *Server) APIServer() *http.Server { return sv.httpServer(sv.APIHandler(), maxBody) }

// LimitConns wraps ln with the configured connection caps; name names the endpoint in the log.
func (sv *Server) LimitConns(ln net.Listener, name string) net.Listener {
	return &connLimiter{
		Listener:  ln,
		name:      name,
		perSource: sv.limits.MaxConnsPerSource,
		slots:     make(chan struct{}, sv.limits.MaxConns),
		done:      make(chan struct{}),
		log:       sv.log,
		bySource:  map[netip.Addr]int{},
	}
}

// Accept returns the next connection within the caps.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		src := sourceOf(c.RemoteAddr())
		l.mu.Lock()
		if l.bySource[src] >= l.perSource {
			l.noteRefused(src)
			l.mu.Unlock()
			_ = c.Close()
			<-l.slots
			continue
		}
		l.bySource[src]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, l: l, src: src}, nil
	}
}

// noteRefused logs refused connections, at most one line every 10 seconds per endpoint. l.mu is held.
func (l *connLimiter) noteRefused(src netip.Addr) {
	l.refused++
	if time.Since(l.lastWarned) < 10*time.Second {
		return
	}
	l.log.Warn("refused connections: too many open from one source (http_max_conns_per_source)", "endpoint", l.name, "source", src.String(), "limit", l.perSource, "refused", l.refused)
	l.refused, l.lastWarned = 0, time.Now()
}

// Close stops Accept (also one waiting for a slot) and closes the listener.
func (l *connLimiter) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func (l *connLimiter) release(src netip.Addr) {
	l.mu.Lock()
	if l.bySource[src]--; l.bySource[src] <= 0 {
		delete(l.bySource, src)
	}
	l.mu.Unlock()
	<-l.slots
}

// sourceOf is the address a connection's cap is counted by: the IPv4 address, or the /64 of an IPv6
// address (one host usually holds a whole /64). Addresses that do not parse share one count.
func sourceOf(a net.Addr) netip.Addr {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	l    *connLimiter
	src  netip.Addr
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}

// CloseWrite half-closes the connection when the underlying one can, so that net/http's lingering
// close (an answer sent before the request's body was read, such as a 413) still works.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
