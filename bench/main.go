//go:build linux

// Command bench measures Ferry side by side with the paths people use instead, in one run on one
// machine, and reports each figure as a ratio to the direct connection:
//
//	go run ./bench              # full run (a few minutes); writes docs/BENCHMARKS.md and docs/benchmarks.json
//	go run ./bench -smoke       # a few seconds per figure; prints the table, writes nothing
//
// It builds the installation with demo.Start (real PostgreSQL behind the Azure emulator's TLS front,
// a node and a connected client in this process), starts a private OpenSSH server with an `ssh -N -L`
// forward and a pgbouncer in session mode, then runs pgbench -S (-c 8 for throughput; -c 1 with a
// per-transaction log, -l, for the p50 and p99 latency), pgbench -C -S and a bulk COPY TO STDOUT
// through every path, alternating between them, plus the tunnel's raw TCP ceiling and the memory
// held by idle proxied connections. Ferry is measured twice: "ferry" with the node in this process
// (demo.Start) and "ferry proc" with the node as its own process, as deployed (cmd/ferry-node built
// and run with a state of its own against the same emulator, a second client daemon enrolled
// with it; -node-process=false skips it), and "ferry proc pg" is that node process with its catalog
// and audit log on PostgreSQL (a database on the emulator's server, logged in to with the node's
// managed identity), as a fleet's nodes keep them (-catalog-pg=false skips it): the two side by
// side compare the SQLite and the PostgreSQL catalog in the same run. pgbench runs through paths
// whose node's audit the bench can read also report the query records written per second.
//
// pgbench -C: every path, the server's own unix socket included, pays PostgreSQL's start of a
// backend (fork, then catalog caches and shared memory mapped in): about 800 page faults per
// connection, whatever the emulator's server settings (its fsync=off, shared_buffers=16MB and mmap
// dynamic shared memory make no difference to the count, nor do huge pages for shared memory,
// LD_BIND_NOW or glibc's malloc hugetlb tunable). On bare metal a fault costs well under a
// microsecond and a backend starts in 1–3 ms; on a virtual machine with costly faults (nested
// virtualisation: 12 µs and more per fault, 2.5 ms to fork and reap an 80 MB process) it takes
// 20–40 ms of CPU, and with -c 4 on 2 cores about 60 ms of waiting. So the report gives, next to
// TPS, pgbench's average connection time per path and each path's own connection cost: its
// connection time minus the socket's, measured in the same pass. As root it also runs a second client daemon in virtual
// networking mode inside a network namespace (demo/vnet) and measures the same figures through the
// resource's VN address ("ferry VN"). The DNS figures put Ferry's resolver next to dnsmasq serving
// the same names, with dnsperf. What is missing (a package, root) is printed as "not measured" with
// the reason, never faked.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/demo/vnet"
)

// options are the command's flags.
type options struct {
	duration  time.Duration // per pgbench run (-T)
	rounds    int           // passes over all paths per figure
	copyMB    int           // bulk COPY size, 10^6 bytes
	idleConns int           // idle TCP connections through Ferry for the memory figure
	sessions  int           // idle authenticated sessions for the per-session memory figure
	outDir    string        // where BENCHMARKS.md and benchmarks.json go; "" = print only
	install   bool          // apt-get install missing peers when root
	smoke     bool
	verbose   bool
	cpuProf   string // write a CPU profile of this process (node, client, front) here
	only      string // comma-separated path names to measure; "" = all
	nodeProc  bool   // also measure with the node as its own process
	catalogPG bool   // and with that node's catalog and audit log on PostgreSQL
}

func main() {
	vnet.RunCLIIfAsked() // the VN daemon in the namespace is this binary acting as the ferry CLI
	var o options
	o.duration = 20 * time.Second
	flag.Var((*seconds)(&o.duration), "T", "duration of each pgbench run, in seconds as pgbench -T (20) or as a Go duration (20s)")
	flag.IntVar(&o.rounds, "rounds", 1, "passes over all paths for each figure (paths alternate within a pass)")
	flag.IntVar(&o.copyMB, "copy-mb", 1000, "size of the bulk COPY TO STDOUT and of the raw tunnel transfer, in MB (10^6 bytes)")
	flag.IntVar(&o.idleConns, "idle", 1000, "idle TCP connections opened through Ferry for the memory figure")
	flag.IntVar(&o.sessions, "sessions", 80, "idle authenticated PostgreSQL sessions for the per-session memory figure (the emulator's server allows 100 connections)")
	flag.StringVar(&o.outDir, "out", "docs", "directory for BENCHMARKS.md and benchmarks.json (\"\" = print only; -smoke defaults to \"\")")
	flag.BoolVar(&o.install, "install", true, "when root, apt-get install the peers that are missing (openssh-server, pgbouncer)")
	flag.BoolVar(&o.smoke, "smoke", false, "quick run: -T 2s, -copy-mb 32, -idle 100, -sessions 10, nothing written unless -out is given")
	flag.StringVar(&o.cpuProf, "cpuprofile", "", "write a CPU profile of the bench process (node, client and emulator front run in it) to this file")
	flag.StringVar(&o.only, "paths", "", "measure only these paths (comma-separated: direct,ferry,ferry proc,ferry proc pg,ferry VN,ssh -L,pgbouncer,socket), e.g. to profile one")
	flag.BoolVar(&o.nodeProc, "node-process", true, "also measure Ferry with the node as its own process (builds cmd/ferry-node; path \""+procPathName+"\")")
	flag.BoolVar(&o.catalogPG, "catalog-pg", true, "also measure the node process with its catalog and audit log on PostgreSQL, as a fleet's nodes keep them (path \""+procPGPathName+"\", next to \""+procPathName+"\" on SQLite; needs -node-process)")
	flag.BoolVar(&o.verbose, "verbose", false, "log what the node, client and emulator do")
	flag.Parse()
	if o.smoke {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["T"] {
			o.duration = 2 * time.Second
		}
		if !set["copy-mb"] {
			o.copyMB = 32
		}
		if !set["idle"] {
			o.idleConns = 100
		}
		if !set["sessions"] {
			o.sessions = 10
		}
		if !set["out"] {
			o.outDir = ""
		}
	}
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (o options) validate() error {
	switch {
	case o.duration < time.Second:
		return fmt.Errorf("-T %v: must be at least 1s (pgbench counts whole seconds)", o.duration)
	case o.rounds < 1:
		return fmt.Errorf("-rounds %d: must be at least 1", o.rounds)
	case o.copyMB < 1:
		return fmt.Errorf("-copy-mb %d: must be at least 1", o.copyMB)
	case o.idleConns < 1 || o.idleConns > 20000:
		return fmt.Errorf("-idle %d: must be between 1 and 20000", o.idleConns)
	case o.sessions < 1 || o.sessions > 90:
		return fmt.Errorf("-sessions %d: must be between 1 and 90 (the emulator's server allows 100 connections)", o.sessions)
	}
	return nil
}

func run(ctx context.Context, o options) error {
	level := slog.LevelError
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	for _, tool := range []string{"psql", "pgbench"} {
		if _, err := lookTool(tool); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install postgresql-client-15): it drives every measurement", tool)
		}
	}
	dir, err := os.MkdirTemp("", "ferry-bench-")
	if err != nil {
		return fmt.Errorf("make temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // pgbouncer may run as another account
		return fmt.Errorf("make temp dir: %w", err)
	}

	if o.cpuProf != "" {
		f, err := os.Create(o.cpuProf)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep := newReport(o)
	step("starting PostgreSQL, the Azure emulator, a node and a client (demo.Start)")
	inst, err := startInstallation(ctx, dir, log)
	if err != nil {
		return err
	}
	defer inst.Close()
	rep.Postgres = inst.pgVersion

	paths := []*path{inst.socketPath(), inst.directPath(), inst.ferryPath()}
	names, err := inst.addAliases(ctx)
	if err != nil {
		return err
	}
	step("virtual networking mode: a second client daemon in a network namespace (demo/vnet)")
	vn, err := inst.startVN(ctx, dir)
	if err != nil {
		reason := err.Error()
		if os.Geteuid() != 0 {
			reason += ": run the bench as root (sudo go run ./bench) to include it"
		}
		rep.notMeasured(vnPathName+" (virtual networking mode)", reason)
		step("  " + vnPathName + ": not measured: " + reason)
	} else {
		defer vn.Close()
		paths = append(paths, vn.path)
	}
	if o.nodeProc {
		step("the node as its own process: building and running cmd/ferry-node, enrolling a second client")
		np, err := inst.startNodeProc(ctx, dir, log, false)
		if err != nil {
			rep.notMeasured(procPathName+" (node as its own process)", err.Error())
			step("  " + procPathName + ": not measured: " + err.Error())
		} else {
			defer np.Close()
			paths = append(paths, np.path)
		}
	}
	if o.nodeProc && o.catalogPG {
		step("the node as its own process with its catalog and audit log on PostgreSQL, enrolling a third client")
		np, err := inst.startNodeProc(ctx, dir, log, true)
		if err != nil {
			rep.notMeasured(procPGPathName+" (catalog and audit log on PostgreSQL)", err.Error())
			step("  " + procPGPathName + ": not measured: " + err.Error())
		} else {
			defer np.Close()
			paths = append(paths, np.path)
		}
	}
	peers := newPeers(dir, inst, o.install)
	defer peers.Close()
	if p, err := peers.startSSH(ctx); err != nil {
		rep.notMeasured("ssh -L", err.Error())
		step("ssh -L: not measured: " + err.Error())
	} else {
		paths = append(paths, p)
	}
	if p, err := peers.startPgbouncer(ctx); err != nil {
		rep.notMeasured("pgbouncer", err.Error())
		step("pgbouncer: not measured: " + err.Error())
	} else {
		paths = append(paths, p)
	}
	for _, p := range paths {
		if err := p.check(ctx); err != nil {
			return fmt.Errorf("path %s does not work: %w", p.Name, err)
		}
		rep.Paths = append(rep.Paths, pathInfo{Name: p.Name, Description: p.Description})
	}
	if o.only != "" {
		keep := map[string]bool{}
		for _, n := range strings.Split(o.only, ",") {
			keep[strings.TrimSpace(n)] = true
		}
		paths = slices.DeleteFunc(paths, func(p *path) bool { return !keep[p.Name] })
		if len(paths) == 0 {
			return fmt.Errorf("-paths %q names none of the paths", o.only)
		}
	}
	step("initialising pgbench tables (scale 1)")
	if err := inst.initPgbench(ctx); err != nil {
		return err
	}

	secs := int(o.duration / time.Second)
	figures := []struct {
		key, title, unit string
		measure          func(context.Context, *path) (sample, error)
	}{
		{"pgbench_select_tps", fmt.Sprintf("pgbench -S -c 8 -j 2 -T %d: TPS", secs), "tx/s",
			func(ctx context.Context, p *path) (sample, error) {
				return runPgbench(ctx, p, secs, "-S", "-c", "8", "-j", "2")
			}},
		{"latency_c1", fmt.Sprintf("pgbench -S -c 1 -T %d: latency p50, ms", secs), "ms",
			func(ctx context.Context, p *path) (sample, error) {
				return runLatency(ctx, p, dir, secs)
			}},
		{"pgbench_connect_tps", fmt.Sprintf("pgbench -C -S -c 4 -T %d: TPS", secs), "tx/s",
			func(ctx context.Context, p *path) (sample, error) {
				return runPgbench(ctx, p, secs, "-C", "-S", "-c", "4")
			}},
		{"copy_out_mbps", fmt.Sprintf("COPY TO STDOUT of %d MB: MB/s", o.copyMB), "MB/s",
			func(ctx context.Context, p *path) (sample, error) {
				return runCopy(ctx, p, o.copyMB)
			}},
	}
	for _, f := range figures {
		fig := rep.figure(f.key, f.title, f.unit)
		for r := range o.rounds {
			for i := range paths {
				p := paths[(i+r)%len(paths)] // rotate the order each round
				step(fmt.Sprintf("%s via %s (round %d/%d)", f.title, p.Name, r+1, o.rounds))
				s, err := f.measure(ctx, p)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					fig.fail(p.Name, err)
					step("  failed: " + err.Error())
					continue
				}
				fig.add(p.Name, s)
				step("  " + s.String())
			}
		}
	}

	step(fmt.Sprintf("raw TCP through the tunnel alone (%d MB, node to client)", o.copyMB))
	if s, err := tunnelCeiling(ctx, int64(o.copyMB)*1e6); err != nil {
		rep.notMeasured("tunnel raw TCP", err.Error())
	} else {
		rep.figure("tunnel_raw_mbps", fmt.Sprintf("raw TCP through the WireGuard tunnel alone, %d MB: MB/s", o.copyMB), "MB/s").add("ferry", s)
		step("  " + s.String())
	}

	if err := measureDNS(ctx, o, rep, peers, vn, names, dir); err != nil {
		return err
	}

	// The peers hold server connections (pgbouncer's pool); stop them so the
	// memory figures can use the server's connection slots.
	peers.Close()
	if vn != nil {
		vn.Close()
	}
	step(fmt.Sprintf("memory: %d idle TCP connections through Ferry", o.idleConns))
	if m, err := idleMemory(ctx, inst, o.idleConns); err != nil {
		rep.notMeasured("idle connection memory", err.Error())
		step("  failed: " + err.Error())
	} else {
		rep.Memory = append(rep.Memory, m)
		step("  " + m.String())
	}
	step(fmt.Sprintf("memory: %d idle authenticated sessions, direct and through Ferry", o.sessions))
	for _, p := range []*path{inst.directPath(), inst.ferryPath()} {
		if m, err := sessionMemory(ctx, inst, p, o.sessions); err != nil {
			rep.notMeasured("session memory via "+p.Name, err.Error())
			step("  failed: " + err.Error())
		} else {
			rep.Memory = append(rep.Memory, m)
			step("  " + m.String())
		}
	}
	rep.finish()

	md := rep.markdown()
	fmt.Println()
	fmt.Print(md)
	if o.outDir == "" {
		return nil
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	mdFile := filepath.Join(o.outDir, "BENCHMARKS.md")
	if old, err := os.ReadFile(mdFile); err == nil {
		if _, notes, ok := strings.Cut(string(old), notesMarker); ok {
			md += "\n" + notesMarker + notes
		}
	}
	if err := os.WriteFile(mdFile, []byte(md), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	js, err := rep.json()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "benchmarks.json"), js, 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	step("wrote " + filepath.Join(o.outDir, "BENCHMARKS.md") + " and " + filepath.Join(o.outDir, "benchmarks.json"))
	return nil
}

// measureDNS runs dnsperf against dnsmasq, Ferry's resolver on a loopback socket and (when vn is
// running) the VN daemon's resolver, alternating, with the same query file and duration, and adds
// the dns_qps figure. A server that cannot be started is reported as not measured.
func measureDNS(ctx context.Context, o options, rep *report, peers *peers, vn *vnSetup, names aliases, dir string) error {
	step(fmt.Sprintf("DNS: dnsperf against dnsmasq and Ferry's resolver, %d names", len(names.records)))
	if _, err := peers.need(ctx, "dnsperf", "dnsperf"); err != nil {
		rep.notMeasured("DNS (dnsperf)", err.Error())
		step("  not measured: " + err.Error())
		return nil
	}
	qf, err := writeQueryFile(dir, names)
	if err != nil {
		return err
	}
	var targets []*dnsTarget
	if t, err := peers.startDnsmasq(ctx, names); err != nil {
		rep.notMeasured("DNS via dnsmasq", err.Error())
		step("  dnsmasq: not measured: " + err.Error())
	} else {
		targets = append(targets, t)
	}
	t, stop, err := startResolver(names)
	if err != nil {
		return fmt.Errorf("start the resolver on loopback: %w", err)
	}
	defer stop()
	if err := checkAnswers(ctx, t.addr, names); err != nil {
		return fmt.Errorf("the resolver on loopback: %w", err)
	}
	targets = append(targets, t)
	if vn != nil {
		targets = append(targets, vnResolver(vn, names))
	} else {
		rep.notMeasured("DNS via "+dnsResolverVN, "needs virtual networking mode, which was not measured (see above)")
	}
	for _, t := range targets {
		rep.DNSServers = append(rep.DNSServers, pathInfo{Name: t.Name, Description: t.Description})
	}
	secs := int(o.duration / time.Second)
	fig := rep.figure("dns_qps", fmt.Sprintf("dnsperf -l %d, %d names (A): queries/s", secs, len(names.records)), "queries/s")
	for r := range o.rounds {
		for i := range targets {
			t := targets[(i+r)%len(targets)]
			step(fmt.Sprintf("%s via %s (round %d/%d)", fig.Title, t.Name, r+1, o.rounds))
			s, err := runDnsperf(ctx, t, qf, secs)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fig.fail(t.Name, err)
				step("  failed: " + err.Error())
				continue
			}
			fig.add(t.Name, s)
			step("  " + s.String())
		}
	}
	return nil
}

// seconds is a flag value in whole seconds ("20") or a Go duration ("20s").
type seconds time.Duration

func (s *seconds) String() string { return time.Duration(*s).String() }

func (s *seconds) Set(v string) error {
	if n, err := strconv.Atoi(v); err == nil {
		*s = seconds(time.Duration(n) * time.Second)
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("want seconds (20) or a duration (20s): %w", err)
	}
	*s = seconds(d)
	return nil
}

// notesMarker starts the hand-written part of BENCHMARKS.md (analysis, micro-benchmark figures),
// which a new run keeps.
const notesMarker = "<!-- Notes below are written by hand and kept when the bench rewrites this file. -->"

// step prints progress to stderr with a timestamp.
func step(msg string) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), msg)
}
