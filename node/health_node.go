package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/resource"
)

// newHealth makes the health check scheduler (started by startHealth).
func (n *Node) newHealth() *health.Scheduler {
	return health.NewScheduler(health.SchedulerConfig{
		Checker:     n.healthChecker(time.Duration(n.cfg.HealthStepTimeout)),
		List:        n.cat.Resources,
		Interval:    time.Duration(n.cfg.HealthInterval),
		Concurrency: n.cfg.HealthConcurrency,
		Observe:     n.metrics.observeHealth,
		Logger:      n.log,
		Self:        n.routingSelf,
		Store: func(ctx context.Context, r resource.Resource, h api.Health) error {
			return n.cat.PutHealth(ctx, n.id, r.ID, h)
		},
		Forget: func(ctx context.Context, r resource.Resource) error {
			return n.cat.DeleteHealth(ctx, n.id, r.ID)
		},
	})
}

// routingSelf is this node as node/routing sees it, from its catalog record as of now (its tags
// and cluster are the catalog's: an admin may change them while it runs).
func (n *Node) routingSelf(ctx context.Context) (routing.Node, error) {
	rec, err := n.cat.Node(ctx, n.id)
	if err != nil {
		return routing.Node{}, err
	}
	return rec.Routing(time.Now()), nil
}

// startHealth starts the health check scheduler and, when Config.MetricsListen is set, the metrics
// endpoint.
func (n *Node) startHealth(ctx context.Context) error {
	n.health.Start(ctx)
	if n.cfg.MetricsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", n.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("start node: metrics endpoint: %w", err)
	}
	n.metricsLn = ln
	n.serve(&http.Server{Handler: n.metricsHandler(), ReadHeaderTimeout: 10 * time.Second}, ln)
	n.log.Info("metrics endpoint", "addr", ln.Addr().String())
	return nil
}

// healthChecker returns a Checker that reaches servers the way the proxy does (node/upstream).
func (n *Node) healthChecker(stepTimeout time.Duration) *health.Checker {
	return health.NewChecker(n.up.HealthConfig(stepTimeout))
}

// MetricsAddr returns the metrics endpoint's bound address, or nil when it is off.
func (n *Node) MetricsAddr() net.Addr {
	if n.metricsLn == nil {
		return nil
	}
	return n.metricsLn.Addr()
}

// Health returns the health check scheduler.
func (n *Node) Health() *health.Scheduler { return n.health }
