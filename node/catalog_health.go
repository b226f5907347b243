package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catcache"
	"github.com/ferryhq/ferry/node/tokensource"
)

// catalogMetrics are the metrics of the node's view of its catalog: whether it answers, for how long
// it has not, and the age of the snapshot the node authorises from while it does not.
func catalogMetrics(status func() catcache.Status) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_catalog_reachable",
			Help: "1 while the catalog database answers, 0 while it cannot be reached (the node then authorises from its last snapshot and refuses admin writes)."},
			func() float64 {
				if status().Reachable {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_catalog_unreachable_seconds",
			Help: "How long the catalog database has not answered; 0 while it answers."},
			func() float64 {
				st := status()
				if st.Reachable {
					return 0
				}
				return time.Since(st.DownSince).Seconds()
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_catalog_snapshot_age_seconds",
			Help: "Age of the catalog snapshot the node authorises from while the catalog cannot be reached."},
			func() float64 {
				st := status()
				if st.SnapshotAt.IsZero() {
					return 0
				}
				return time.Since(st.SnapshotAt).Seconds()
			}),
	}
}

// catalogReport is the node's account of its catalog and audit spool for /readyz and doctor: ok
// false while the catalog cannot be reached, with since when and what still works.
func catalogReport(st catcache.Status, as audit.Stats, now time.Time) (ok bool, text string) {
	var b strings.Builder
	if st.Reachable {
		b.WriteString("catalog: reachable\n")
	} else {
		fmt.Fprintf(&b, "catalog: unreachable for %s (since %s): %v\n", now.Sub(st.DownSince).Round(time.Second),
			st.DownSince.UTC().Format(time.RFC3339), st.Err)
		fmt.Fprintf(&b, "  open sessions continue; known devices connect from the catalog snapshot of %s (%s old); admin changes fail until the catalog is back\n",
			st.SnapshotAt.UTC().Format(time.RFC3339), now.Sub(st.SnapshotAt).Round(time.Second))
	}
	fmt.Fprintf(&b, "audit spool: %d records waiting to be shipped (%d spooled, %d shipped since start)\n", as.SpoolDepth, as.Spooled, as.Shipped)
	return st.Reachable, b.String()
}

// doctorCatalogDown is doctor's report when the catalog database cannot be reached: the catalog
// step failed with what to do, what the running node says (its /readyz: since when, the snapshot it
// authorises from, its audit spool) when its metrics endpoint is on, and the audit spool's depth
// read from the state directory. It always reports a failure.
func doctorCatalogDown(ctx context.Context, w io.Writer, dir string, cfg Config, cerr error) bool {
	fmt.Fprintln(w, "node")
	printLine(w, "✗", "catalog", "unreachable: the catalog database does not answer", 0)
	fmt.Fprintf(w, "      error: %s\n      fix:   %s\n", tokensource.Brief(cerr),
		"the catalog database does not answer: check that its server is up and reachable from this host (catalog_url); "+
			"meanwhile a running node keeps open sessions and lets known devices connect from its last snapshot, and refuses admin changes")
	if cfg.MetricsListen != "" {
		fmt.Fprintf(w, "running node (%s/readyz):\n", cfg.MetricsListen)
		text, err := readyz(ctx, cfg.MetricsListen)
		if err != nil {
			text = fmt.Sprintf("not answering: %v\n", err)
		}
		for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
			fmt.Fprintf(w, "      %s\n", l)
		}
	} else {
		fmt.Fprintln(w, "      how long the running node has seen the catalog unreachable: see its log, or turn on metrics_listen (/readyz, ferry_catalog_unreachable_seconds)")
	}
	if n, err := spoolDepth(ctx, filepath.Join(dir, "audit-spool.db")); err != nil {
		fmt.Fprintf(w, "audit spool: %v\n", err)
	} else {
		fmt.Fprintf(w, "audit spool: %d records waiting to be shipped to the catalog database\n", n)
	}
	return false
}

// readyz reads the running node's /readyz at its metrics address.
func readyz(ctx context.Context, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/readyz", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return string(b), err
}

// spoolDepth counts the records in the audit spool file at path (0 when there is none).
func spoolDepth(ctx context.Context, path string) (int64, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	db, err := audit.OpenDB(path)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	var n int64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM audit_spool`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count %s: %w", path, err)
	}
	return n, nil
}

// catalogStartError is the error of a start that could not open or read the catalog: one that
// cannot reach it says that the node does not start without it.
func catalogStartError(err error) error {
	if catcache.IsUnreachable(err) {
		return fmt.Errorf("start node: the catalog is unreachable; a node does not start without it (it could authorise nothing): start it again when the catalog answers: %w", err)
	}
	return fmt.Errorf("start node: %w", err)
}
