package node

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catcache"
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
