package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/pgproxy"
)

// metrics are the node's Prometheus metrics, on a registry of its own (no global state). The names
// follow Prometheus' naming conventions (https://prometheus.io/docs/practices/naming/).
type metrics struct {
	reg           *prometheus.Registry
	healthy       *prometheus.GaugeVec   // ferry_resource_healthy{resource}: 1 healthy, 0 not
	checks        *prometheus.CounterVec // ferry_health_checks_total{resource,result}
	checkSeconds  prometheus.Histogram   // ferry_health_check_duration_seconds
	tokens        *prometheus.CounterVec // ferry_token_requests_total{result}
	sessions      prometheus.Gauge       // ferry_active_sessions
	sessionsTotal prometheus.Counter     // ferry_sessions_total
	bytes         *prometheus.CounterVec // ferry_proxied_bytes_total{direction}
	panics        prometheus.Counter     // ferry_node_session_panics_total
	log           *slog.Logger
}

// newMetrics makes the node's metrics; auditStats reads the audit log's counters.
func newMetrics(log *slog.Logger, auditStats func() audit.Stats) *metrics {
	m := &metrics{
		log: log,
		reg: prometheus.NewRegistry(),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_resource_healthy",
			Help: "1 when the resource's last health check passed, 0 when it failed or has not run yet."}, []string{"resource"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_health_checks_total",
			Help: "Health checks run, by resource and result (healthy, or the step that failed)."}, []string{"resource", "result"}),
		checkSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_health_check_duration_seconds",
			Help: "Duration of health checks.", Buckets: prometheus.ExponentialBuckets(0.005, 4, 8)}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_token_requests_total",
			Help: "Managed identity access token requests (served from the cache or IMDS), by result (ok, error)."}, []string{"result"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_active_sessions",
			Help: "PostgreSQL client connections being proxied now."}),
		sessionsTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_sessions_total",
			Help: "PostgreSQL client connections accepted for proxying."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_proxied_bytes_total",
			Help: "Bytes relayed between clients and the proxy, by direction (from_client, to_client)."}, []string{"direction"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_node_session_panics_total",
			Help: "PostgreSQL client sessions ended by a panic in the node (a bug): the session was ended alone, the node kept running."}),
	}
	m.reg.MustRegister(m.healthy, m.checks, m.checkSeconds, m.tokens, m.sessions, m.sessionsTotal, m.bytes, m.panics,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_audit_queue_depth",
			Help: "Queries waiting in the audit log's queue to be written."}, func() float64 { return float64(auditStats().Queued) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_audit_queries_dropped_total",
			Help: "Query records never written to the audit log (their write failed after retries, or their session's log had failed); each such session is ended."},
			func() float64 { return float64(auditStats().QueriesDropped) }),
		auditFailures(auditStats),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_audit_write_retries_total",
			Help: "Audit log writes that failed and were tried again."}, func() float64 { return float64(auditStats().WriteRetries) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_audit_session_waits_total",
			Help: "Times a session waited for room in its own allowance of unwritten query records (backpressure on a session that floods statements)."},
			func() float64 { return float64(auditStats().SessionWaits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_audit_spooled_total",
			Help: "Audit records written to the node's local spool because the audit database refused them after their retries."},
			func() float64 { return float64(auditStats().Spooled) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_audit_shipped_total",
			Help: "Audit records shipped from the node's local spool to the audit database."}, func() float64 { return float64(auditStats().Shipped) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_audit_spool_depth",
			Help: "Audit records in the node's local spool waiting to be shipped to the audit database."}, func() float64 { return float64(auditStats().SpoolDepth) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"ok", "error"} {
		m.tokens.WithLabelValues(r)
	}
	for _, d := range []string{"from_client", "to_client"} {
		m.bytes.WithLabelValues(d)
	}
	return m
}

// auditFailures is ferry_audit_write_failures_total{record}: audit writes that failed after their
// retries, by record (connection: a start or end, whose session is refused or whose end is lost;
// query: a statement's record, whose session is ended).
func auditFailures(auditStats func() audit.Stats) prometheus.Collector {
	desc := prometheus.NewDesc("ferry_audit_write_failures_total",
		"Audit log writes that failed after their retries, by record (connection: start or end; query).", []string{"record"}, nil)
	return collectorFunc{desc: desc, collect: func(ch chan<- prometheus.Metric) {
		s := auditStats()
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(s.ConnectionWriteFailures), "connection")
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(s.QueryWriteFailures), "query")
	}}
}

// collectorFunc is a collector of one metric family computed at scrape time.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

// observeHealth records one health check result.
func (m *metrics) observeHealth(h api.Health) {
	v, result := 0.0, h.FailedStep
	if h.State == api.HealthHealthy {
		v, result = 1, api.HealthHealthy
	}
	m.healthy.WithLabelValues(h.Resource).Set(v)
	m.checks.WithLabelValues(h.Resource, result).Inc()
	m.checkSeconds.Observe(h.DurationMS / 1000)
}

// countingTokens counts token requests.
type countingTokens struct {
	pgproxy.TokenSource
	m *metrics
}

func (c countingTokens) Token(ctx context.Context, clientID string) (string, time.Time, error) {
	tok, exp, err := c.TokenSource.Token(ctx, clientID)
	if err != nil {
		c.m.tokens.WithLabelValues("error").Inc()
	} else {
		c.m.tokens.WithLabelValues("ok").Inc()
	}
	return tok, exp, err
}

// Invalidate passes a refused token on to the source, when it caches tokens.
func (c countingTokens) Invalidate(clientID, token string) {
	if inv, ok := c.TokenSource.(pgproxy.TokenInvalidator); ok {
		inv.Invalidate(clientID, token)
	}
}

// session counts a proxied client connection while serve runs on it. A panic that escapes serve
// (pgproxy.Proxy.Serve recovers its own; this is the last guard of the connection's goroutine) ends
// this connection alone: it is logged with its stack, counted, and the client gets a FATAL XX000.
func (m *metrics) session(c net.Conn, serve func(net.Conn)) {
	m.sessions.Inc()
	m.sessionsTotal.Inc()
	defer m.sessions.Dec()
	defer m.recoverSession(c)
	serve(&countingConn{Conn: c, in: m.bytes.WithLabelValues("from_client"), out: m.bytes.WithLabelValues("to_client")})
}

type countingConn struct {
	net.Conn
	in, out prometheus.Counter
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(float64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(float64(n))
	return n, err
}

// CloseWrite half-closes when the connection can.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connection cannot half-close")
}

// metricsHandler serves GET /metrics (Prometheus text format), /livez (the process serves HTTP) and
// /readyz (the catalog answers and the tunnel is up).
func (n *Node) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if n.tun == nil {
			http.Error(w, "not ready: the WireGuard tunnel is not up", http.StatusServiceUnavailable)
			return
		}
		// The cache's view first: it knows since when the catalog has not answered.
		ok, report := catalogReport(n.authz.Status(), n.audit.Stats(), time.Now())
		if ok {
			if err := n.db.PingContext(ctx); err != nil {
				ok, report = false, "catalog: unreachable: "+err.Error()+"\n"+report[strings.Index(report, "\n")+1:]
			}
		}
		if !ok {
			http.Error(w, "not ready: "+report, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n" + report))
	})
	return mux
}

// recoverSession is deferred by session: see there. It never panics itself.
func (m *metrics) recoverSession(c net.Conn) {
	v := recover()
	if v == nil {
		return
	}
	m.panics.Inc()
	m.log.Error("panic in a proxied session; the session was ended, the node keeps running",
		"panic", fmt.Sprint(v), "client", c.RemoteAddr().String(), "stack", string(debug.Stack()))
	defer func() {
		if v := recover(); v != nil {
			m.log.Error("panic while ending a session after a panic", "panic", fmt.Sprint(v))
		}
	}()
	if buf, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "XX000", Message: pgproxy.PanicMessage}).Encode(nil); err == nil {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Write(buf)
	}
	c.Close()
}
