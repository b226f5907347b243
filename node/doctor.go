package node

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/catalog"
	"github.com/ferryhq/ferry/node/catcache"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/healthview"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/ferryhq/ferry/node/upstream"
	"github.com/ferryhq/ferry/resource"
)

// DoctorOptions tune Doctor.
type DoctorOptions struct {
	// Resource is the resource to check; "" checks the node itself and then every resource.
	Resource string
	// StepTimeout bounds each step; 0 = the config's HealthStepTimeout.
	StepTimeout time.Duration
	// Log, when set, receives the token source's log: each token error in full (azidentity's
	// multi-line dump: the request, IMDS's answer, the troubleshooting link), of which the steps
	// show one line (tokensource.Brief). `ferry-node doctor --verbose` sets it to stderr.
	Log io.Writer
}

// maxClockSkew is how far a token's iat may lie in the local clock's future before the node's clock
// is called wrong. Azure Database for PostgreSQL itself rejects tokens outside nbf..exp.
const maxClockSkew = 5 * time.Minute

// Doctor runs, on the node host, the health check of one resource (or of every resource, after checks
// of the node itself: catalog writable, WireGuard port, IMDS reachable, clock against a token's iat),
// printing each step to w with ✓ or ✗ (– for one that could not run), its timing, and for a failure the error and the fix. It reads
// the node's state in dir and works whether or not the node runs. ok is true only when every step
// passed; err is for failures to run at all (no state, unknown resource).
func Doctor(ctx context.Context, w io.Writer, dir string, cfg Config, opt DoctorOptions) (ok bool, err error) {
	cfg.applyDefaults()
	if opt.StepTimeout <= 0 {
		opt.StepTimeout = time.Duration(cfg.HealthStepTimeout)
	}
	dbPath := filepath.Join(dir, dbFile)
	state := dbPath
	if cfg.CatalogURL != "" {
		state = filepath.Join(dir, keyFile) // the catalog is elsewhere; the audit file may not exist yet
	}
	if _, err := os.Stat(state); err != nil {
		return false, fmt.Errorf("doctor: no node state in %s (run `ferry-node init --state %s` first): %w", dir, dir, err)
	}
	db, err := openCatalogDB(ctx, dir, cfg, catalogLogin{})
	if catcache.IsUnreachable(err) {
		return doctorCatalogDown(ctx, w, dir, cfg, err), nil
	}
	if err != nil {
		return false, fmt.Errorf("doctor: %w", err)
	}
	defer db.Close()
	cat, err := catalog.Open(ctx, db)
	if catcache.IsUnreachable(err) {
		return doctorCatalogDown(ctx, w, dir, cfg, err), nil
	}
	if err != nil {
		return false, fmt.Errorf("doctor: %w", err)
	}
	rs, err := cat.Resources(ctx)
	if catcache.IsUnreachable(err) {
		return doctorCatalogDown(ctx, w, dir, cfg, err), nil
	}
	if err != nil {
		return false, fmt.Errorf("doctor: %w", err)
	}
	if opt.Resource != "" {
		i := -1
		for j, r := range rs {
			if r.Name == opt.Resource {
				i = j
			}
		}
		if i < 0 {
			return false, fmt.Errorf("doctor: resource %q does not exist in the catalog of %s", opt.Resource, dir)
		}
		rs = rs[i : i+1]
	}
	roots, err := upstream.RootPool(cfg.CAFiles)
	if err != nil {
		return false, fmt.Errorf("doctor: %w", err)
	}
	tsCfg := tokensource.Config{IMDSEndpoint: cfg.IMDSEndpoint, Timeout: opt.StepTimeout}
	if opt.Log != nil {
		tsCfg.Logger = slog.New(slog.NewTextHandler(opt.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	tokens, err := tokensource.New(tsCfg)
	if err != nil {
		return false, fmt.Errorf("doctor: %w", err)
	}
	ok = true
	if opt.Resource == "" {
		// The identities the resources use, in order: the first that gets a token checks the clock.
		var clientIDs []string
		for _, r := range rs {
			if !slices.Contains(clientIDs, r.ManagedIdentityClientID) {
				clientIDs = append(clientIDs, r.ManagedIdentityClientID)
			}
		}
		if len(clientIDs) == 0 {
			clientIDs = []string{""} // the system-assigned identity
		}
		where := catalogWhere(dir, cfg)
		if db.Dialect() == store.Postgres {
			where = "PostgreSQL on " + db.Pool().Config().ConnConfig.Host
		}
		ok = doctorNode(ctx, w, cat, cfg, tokens, clientIDs, opt.StepTimeout, where)
	}
	allowed, err := cfg.allowList()
	if err != nil {
		return false, fmt.Errorf("doctor: %w", err)
	}
	// Servers and Key Vault are reached as the running node reaches them.
	sn := &Node{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	checker := health.NewChecker(upstream.New(sn.upstreamConfig(allowed, roots, cat, tokens, tokens)).HealthConfig(opt.StepTimeout))
	// Which node this is, and what every node last said (health is kept per node and resource).
	self := doctorSelf(ctx, dir, cfg, cat)
	fleet, ferr := healthview.Read(ctx, cat, rs, time.Now())
	for _, r := range rs {
		fmt.Fprintf(w, "%s  %s\n", r.Name, describe(r))
		serves, why, err := routing.Serves(r.ProxyClusterID, r.EgressFilter, self)
		if err != nil {
			why = fmt.Sprintf("its egress filter %q does not parse: %v", r.EgressFilter, err)
		}
		if !serves {
			printLine(w, notRunMark, "candidate", "not checked on this node ("+self.Name+"): "+why, 0)
			if !printFleet(w, fleet[r.Name], ferr) {
				ok = false
			}
			fmt.Fprintf(w, "%s: not checked on node %s (not a candidate)\n", r.Name, self.Name)
			continue
		}
		h := checker.Check(ctx, r, func(s api.HealthStep) { printStep(w, s) })
		on := " on node " + self.Name
		if h.State != api.HealthHealthy {
			ok = false
			fmt.Fprintf(w, "      error: %s\n      fix:   %s\n", h.Error, h.Hint)
			fmt.Fprintf(w, "%s: unhealthy (%s)%s\n", r.Name, h.FailedStep, on)
		} else {
			fmt.Fprintf(w, "%s: healthy%s\n", r.Name, on)
		}
		printFleet(w, fleet[r.Name], ferr)
	}
	if len(rs) == 0 {
		fmt.Fprintln(w, "no resources in the catalog")
	}
	return ok, nil
}

// doctorSelf is this node as node/routing sees it: its record in the catalog, found by the ID in
// the state directory, or, without one (a node initialised and not started yet, its record deleted,
// the catalog failing to answer), what its config says it is (its cluster and tags), as admission
// judges by (session.Config.Self). Doctor checks a resource from this host only when the node is
// one of its candidates, so that it never opens a connection an egress filter or a proxy cluster
// keeps this node from.
func doctorSelf(ctx context.Context, dir string, cfg Config, cat *catalog.Catalog) routing.Node {
	fromConfig := routing.Node{Name: cfg.Name, ClusterID: cfg.ClusterID, Tags: cfg.Tags, Online: true}
	if fromConfig.Name == "" {
		fromConfig.Name = "this node"
	}
	b, err := os.ReadFile(filepath.Join(dir, nodeFile))
	if err != nil {
		return fromConfig
	}
	var id nodeIdentity
	if json.Unmarshal(b, &id) != nil || !api.ValidNodeID(id.ID) {
		return fromConfig
	}
	fromConfig.ID = id.ID
	rec, err := cat.Node(ctx, id.ID)
	if err != nil {
		return fromConfig
	}
	return rec.Routing(time.Now())
}

// printFleet prints the latest result of each candidate node of a resource, as stored in the
// catalog (h is the resource's healthview summary; err its read error). It returns false when no
// node can reach the resource.
func printFleet(w io.Writer, h api.Health, err error) bool {
	if err != nil {
		fmt.Fprintf(w, "      other nodes: cannot read their results: %v\n", err)
		return true
	}
	if h.Reason != "" {
		fmt.Fprintf(w, "      %s\n", h.Reason)
	}
	if len(h.Nodes) > 0 {
		fmt.Fprintln(w, "      latest result of each candidate node:")
	}
	for _, n := range h.Nodes {
		fmt.Fprintf(w, "        %s: %s\n", n.NodeName, nodeHealthText(n))
	}
	return h.Reason == ""
}

// nodeHealthText is one node's result in a line: its label, when it was checked and how long it
// took, and "stale (node offline)" for a node that does not run.
func nodeHealthText(h api.Health) string {
	s := h.Label()
	if h.Checked {
		s += fmt.Sprintf(" (checked %s, %.0f ms)", h.Time.UTC().Format(time.RFC3339), h.DurationMS)
	}
	if h.Stale {
		s += ", stale: the node is offline"
	}
	if h.State != api.HealthHealthy && h.Checked && h.Error != "" {
		e := []rune(h.Error)
		if len(e) > 160 { // the full error is in that node's diagnostics
			e = append(e[:159], '…')
		}
		s += ": " + string(e)
	}
	return s
}

func describe(r resource.Resource) string {
	id := "system-assigned identity"
	if r.ManagedIdentityClientID != "" {
		id = "user-assigned identity " + r.ManagedIdentityClientID
	}
	if r.SecretStoreID != "" {
		// The username (and the client ID, with its path) are secret values: name their paths.
		if r.ManagedIdentityClientIDPath != "" {
			id = "identity from secret " + r.SecretStoreID + "/" + r.ManagedIdentityClientIDPath
		}
		return fmt.Sprintf("(%s:%d, database %s, role from secret %s/%s, %s)", r.Hostname, r.Port, r.Database, r.SecretStoreID, r.UsernamePath, id)
	}
	return fmt.Sprintf("(%s:%d, database %s, role %s, %s)", r.Hostname, r.Port, r.Database, r.LoginUsername(), id)
}

func printStep(w io.Writer, s api.HealthStep) {
	mark, text := "✓", s.Detail
	if !s.OK {
		mark, text = "✗", "failed"
	}
	printLine(w, mark, s.Name, text, s.DurationMS)
}

// notRunMark marks a check that did not run (it needs what an earlier step failed to get): neither
// passed nor failed.
const notRunMark = "–"

func printLine(w io.Writer, mark, name, text string, ms float64) {
	fmt.Fprintf(w, "  %s %-12s %-70s %8.1f ms\n", mark, name, text, ms)
}

// errNotRun is what a doctor step returns when it could not run; its detail says why.
var errNotRun = errors.New("not run")

// doctorNode checks the node itself and prints the steps.
func doctorNode(ctx context.Context, w io.Writer, cat *catalog.Catalog, cfg Config, tokens *tokensource.Source, clientIDs []string, timeout time.Duration, catalogWhere string) bool {
	fmt.Fprintln(w, "node")
	ok := true
	step := func(name string, f func(ctx context.Context) (detail, hint string, err error)) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		t0 := time.Now()
		detail, hint, err := f(ctx)
		if errors.Is(err, errNotRun) {
			printLine(w, notRunMark, name, detail, float64(time.Since(t0).Microseconds())/1000)
			return
		}
		s := api.HealthStep{Name: name, OK: err == nil, Detail: detail, DurationMS: float64(time.Since(t0).Microseconds()) / 1000}
		printStep(w, s)
		if err != nil {
			ok = false
			fmt.Fprintf(w, "      error: %s\n      fix:   %s\n", tokensource.Brief(err), hint)
		}
	}
	step("catalog", func(ctx context.Context) (string, string, error) {
		if err := cat.SetSetting(ctx, "doctor_last_run", time.Now().UTC().Format(time.RFC3339)); err != nil {
			hint := "the node cannot write its catalog: check the state directory's owner, permissions and free space"
			if cfg.CatalogURL != "" {
				hint = "the node cannot write its catalog database (catalog_url): check that the server is up and that the node's identity may write the database"
			}
			return "", hint, err
		}
		return "writable (" + catalogWhere + ")", "", nil
	})
	step("wireguard", func(context.Context) (string, string, error) {
		if cfg.WireGuardPort == 0 {
			return "port 0: a free UDP port at each start (tests and demos only)", "", nil
		}
		c, err := net.ListenUDP("udp", &net.UDPAddr{Port: cfg.WireGuardPort})
		switch {
		case err == nil:
			c.Close()
			return fmt.Sprintf("UDP %d is free to bind (the node is not running)", cfg.WireGuardPort), "", nil
		case errors.Is(err, syscall.EADDRINUSE):
			return fmt.Sprintf("UDP %d is bound (by the running ferry-node, or by another program)", cfg.WireGuardPort), "", nil
		}
		return "", fmt.Sprintf("the node cannot bind UDP %d: choose another wireguard_port or free it", cfg.WireGuardPort), err
	})
	var tok string
	imds := cfg.IMDSEndpoint
	if imds == "" {
		imds = "http://169.254.169.254"
	}
	step("imds", func(ctx context.Context) (string, string, error) {
		var t string
		var err error
		for _, clientID := range clientIDs {
			if t, _, err = tokens.Token(ctx, clientID); err == nil || !strings.Contains(err.Error(), "Identity not found") {
				break
			}
		}
		if err != nil && strings.Contains(err.Error(), "Identity not found") {
			return imds + " answered (Identity not found: see the resources' token step)", "", nil
		}
		if err != nil {
			return "", "the node cannot reach IMDS (" + imds + "): ferry-node must run on the Azure VM itself, with no proxy or firewall rule in the way of 169.254.169.254", err
		}
		tok = t
		return imds + " issued an access token", "", nil
	})
	step("clock", func(context.Context) (string, string, error) {
		if tok == "" {
			return "not checked: no access token to read the time from (see imds)", "", errNotRun
		}
		iat, exp, err := tokenTimes(tok)
		if err != nil {
			return "", "IMDS sent a token the node cannot read", err
		}
		now := time.Now()
		switch {
		case iat.Sub(now) > maxClockSkew:
			return "", "the node's clock is behind: enable time sync (chrony with the Azure PTP clock, or NTP)", fmt.Errorf("the token's iat %s lies %s in the local clock's future", iat.UTC().Format(time.RFC3339), iat.Sub(now).Round(time.Second))
		case !now.Before(exp):
			return "", "the node's clock is ahead: enable time sync (chrony with the Azure PTP clock, or NTP)", fmt.Errorf("the token expired at %s by the local clock", exp.UTC().Format(time.RFC3339))
		}
		return fmt.Sprintf("token iat %s ago by the local clock, expires in %s", now.Sub(iat).Round(time.Second), exp.Sub(now).Round(time.Minute)), "", nil
	})
	return ok
}

// tokenTimes reads the iat and exp claims of a JWT without verifying it (it came from IMDS).
func tokenTimes(tok string) (iat, exp time.Time, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return iat, exp, errors.New("access token is not a JWT")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return iat, exp, fmt.Errorf("decode access token claims: %w", err)
	}
	var c struct {
		IAT int64 `json:"iat"`
		EXP int64 `json:"exp"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return iat, exp, fmt.Errorf("decode access token claims: %w", err)
	}
	return time.Unix(c.IAT, 0), time.Unix(c.EXP, 0), nil
}
