//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/netstack"
	"github.com/ferryhq/ferry/tunnel"
)

// sample is one measurement of one figure on one path.
type sample struct {
	Value     float64 `json:"value"`                // the figure, in the figure's unit
	LatencyMs float64 `json:"latency_ms,omitempty"` // pgbench's average latency, ms
	P50Ms     float64 `json:"p50_ms,omitempty"`     // median transaction latency, ms (pgbench -l)
	P99Ms     float64 `json:"p99_ms,omitempty"`     // 99th percentile transaction latency, ms (pgbench -l)
	ConnMs    float64 `json:"conn_ms,omitempty"`    // pgbench's average connection time, ms (-C: per transaction)
	Seconds   float64 `json:"seconds"`              // how long the measurement ran
	Bytes     int64   `json:"bytes,omitempty"`      // bytes transferred (COPY, tunnel)
	Txns      int64   `json:"transactions,omitempty"`
	// NodeCPUus is the CPU time (user + system) the node process used per transaction, in µs,
	// where the node is a process of its own (path "ferry proc"): a node's cost per query,
	// which unlike TPS hardly depends on what else the machine runs.
	NodeCPUus float64 `json:"node_cpu_us_per_tx,omitempty"`
	// AuditPerSec is how many query records the node wrote to its audit log per second while
	// pgbench ran (paths whose node's audit the bench can read); AuditBehind how many of the run's
	// statements were not written yet when it ended (queued in the node).
	AuditPerSec float64 `json:"audit_records_per_s,omitempty"`
	AuditBehind int64   `json:"audit_behind,omitempty"`
	Queries     int64   `json:"queries,omitempty"` // DNS queries answered (dnsperf "completed")
	Lost        int64   `json:"lost,omitempty"`    // DNS queries unanswered within dnsperf's timeout
}

func (s sample) String() string {
	out := fmt.Sprintf("%.1f", s.Value)
	if s.LatencyMs > 0 {
		out += fmt.Sprintf(", latency %.3f ms", s.LatencyMs)
	}
	if s.P50Ms > 0 {
		out += fmt.Sprintf(", p50 %.3f ms, p99 %.3f ms", s.P50Ms, s.P99Ms)
	}
	if s.ConnMs > 0 {
		out += fmt.Sprintf(", connection time %.3f ms", s.ConnMs)
	}
	if s.NodeCPUus > 0 {
		out += fmt.Sprintf(", node CPU %.0f µs/tx", s.NodeCPUus)
	}
	if s.AuditPerSec > 0 {
		out += fmt.Sprintf(", audit %.0f records/s (%d behind at the end)", s.AuditPerSec, s.AuditBehind)
	}
	if s.Bytes > 0 {
		out += fmt.Sprintf(", %d bytes in %.2f s", s.Bytes, s.Seconds)
	}
	if s.Queries > 0 {
		out += fmt.Sprintf(", %d queries answered, %d lost", s.Queries, s.Lost)
	}
	return out
}

var (
	reTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reTxns    = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFailed  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	reConn    = regexp.MustCompile(`(?m)^average connection time = ([0-9.]+) ms`)
)

// runPgbench runs pgbench -n -T secs with args on p and parses TPS and average latency from its
// report (PostgreSQL 15's pgbench output format).
func runPgbench(ctx context.Context, p *path, secs int, args ...string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+2*time.Minute)
	defer cancel()
	cmd := p.command(ctx, "pgbench", append([]string{"-n", "-T", strconv.Itoa(secs)}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var aud0, aud1 int64
	var audErr error
	if p.audited != nil {
		aud0, audErr = p.audited(ctx)
	}
	cpu0, cpuErr := processCPU(p.cpuPid)
	t0 := time.Now()
	err := cmd.Run()
	elapsed := time.Since(t0).Seconds()
	cpu1, cpuErr1 := processCPU(p.cpuPid)
	if p.audited != nil && audErr == nil {
		aud1, audErr = p.audited(ctx)
	}
	out := stdout.String()
	if err != nil {
		return sample{}, fmt.Errorf("pgbench %s: %w: %s", strings.Join(args, " "), err, lastLines(stderr.String()+out, 3))
	}
	if m := reFailed.FindStringSubmatch(out); m != nil && m[1] != "0" {
		return sample{}, fmt.Errorf("pgbench %s: %s failed transactions: %s", strings.Join(args, " "), m[1], lastLines(stderr.String(), 3))
	}
	tps, lat, txns := reTPS.FindStringSubmatch(out), reLatency.FindStringSubmatch(out), reTxns.FindStringSubmatch(out)
	if tps == nil || lat == nil || txns == nil {
		return sample{}, fmt.Errorf("pgbench %s: cannot read its report: %s", strings.Join(args, " "), lastLines(out, 4))
	}
	s := sample{Seconds: elapsed}
	s.Value, _ = strconv.ParseFloat(tps[1], 64)
	s.LatencyMs, _ = strconv.ParseFloat(lat[1], 64)
	s.Txns, _ = strconv.ParseInt(txns[1], 10, 64)
	if m := reConn.FindStringSubmatch(out); m != nil {
		s.ConnMs, _ = strconv.ParseFloat(m[1], 64)
	}
	if p.cpuPid != 0 && cpuErr == nil && cpuErr1 == nil && s.Txns > 0 {
		s.NodeCPUus = float64((cpu1 - cpu0).Microseconds()) / float64(s.Txns)
	}
	if p.audited != nil && audErr == nil && aud1 > aud0 {
		// Per second of pgbench's own run (its transactions over its TPS), as TPS is: not of the
		// connection set-up before it, when no statement runs.
		run := elapsed
		if s.Value > 0 && s.Txns > 0 {
			run = float64(s.Txns) / s.Value
		}
		s.AuditPerSec = float64(aud1-aud0) / run
		// -S runs one statement per transaction; -C's connections add none of their own.
		s.AuditBehind = max(0, s.Txns-(aud1-aud0))
	}
	return s, nil
}

// processCPU returns the user + system CPU time of process pid so far (/proc/PID/stat, in clock
// ticks of 10 ms); 0, nil for pid 0.
func processCPU(pid int) (time.Duration, error) {
	if pid == 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("CPU time of process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: count after its end.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("CPU time of process %d: cannot read /proc/%d/stat", pid, pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("CPU time of process %d: cannot read /proc/%d/stat", pid, pid)
	}
	const tick = 10 * time.Millisecond // USER_HZ = 100 on Linux
	return time.Duration(utime+stime) * tick, nil
}

// runLatency runs pgbench -S -c 1 for secs on p with a per-transaction log (-l) in dir and returns
// the median (as Value and P50Ms) and the 99th percentile of the logged latencies, in ms.
func runLatency(ctx context.Context, p *path, dir string, secs int) (sample, error) {
	logDir, err := os.MkdirTemp(dir, "pgbench-log-")
	if err != nil {
		return sample{}, fmt.Errorf("pgbench -l: %w", err)
	}
	defer os.RemoveAll(logDir)
	if err := os.Chmod(logDir, 0o777); err != nil { // pgbench may run as another account (netns wrap)
		return sample{}, fmt.Errorf("pgbench -l: %w", err)
	}
	s, err := runPgbench(ctx, p, secs, "-S", "-c", "1", "-l", "--log-prefix="+filepath.Join(logDir, "tx"))
	if err != nil {
		return sample{}, err
	}
	logs, err := filepath.Glob(filepath.Join(logDir, "tx.*"))
	if err != nil || len(logs) == 0 {
		return sample{}, fmt.Errorf("pgbench -l wrote no transaction log in %s", logDir)
	}
	var lat []float64
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			return sample{}, fmt.Errorf("pgbench -l: %w", err)
		}
		l, err := parseTxLog(b)
		if err != nil {
			return sample{}, fmt.Errorf("pgbench -l: %s: %w", filepath.Base(f), err)
		}
		lat = append(lat, l...)
	}
	if len(lat) == 0 {
		return sample{}, errors.New("pgbench -l: no transactions logged")
	}
	slices.Sort(lat)
	s.P50Ms, s.P99Ms = percentile(lat, 50), percentile(lat, 99)
	s.Value = s.P50Ms
	return s, nil
}

// parseTxLog reads pgbench's per-transaction log (PostgreSQL 15: "client_id transaction_no time
// script_no time_epoch time_us", time = the transaction's latency in µs) and returns the
// latencies in ms. A transaction that failed or was skipped (time not a number) is an error.
func parseTxLog(b []byte) ([]float64, error) {
	var out []float64
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			return nil, fmt.Errorf("line %d: %q: want 6 fields", i+1, line)
		}
		us, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %q: the transaction did not complete", i+1, line)
		}
		out = append(out, float64(us)/1000)
	}
	return out, nil
}

// percentile returns the nearest-rank pth percentile of the sorted values.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// copyRowWidth is the width of each COPY row's text column; with the newline a row is 1,001 bytes.
const copyRowWidth = 1000

// runCopy runs psql -c "COPY (SELECT repeat('x', 1000) FROM generate_series(1, n)) TO STDOUT" on
// p, counts the bytes psql writes, and returns MB/s (10^6 bytes) over psql's whole run (connect
// included; a few milliseconds). repeat() of constants is folded once, so the server mostly sends.
func runCopy(ctx context.Context, p *path, mb int) (sample, error) {
	rows := int64(mb) * 1e6 / (copyRowWidth + 1)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	q := fmt.Sprintf("COPY (SELECT repeat('x', %d) FROM generate_series(1, %d)) TO STDOUT", copyRowWidth, rows)
	cmd := p.command(ctx, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", q)
	var n counter
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &n, &stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("COPY via %s: %w: %s", p.Name, err, lastLines(stderr.String(), 3))
	}
	secs := time.Since(t0).Seconds()
	if want := rows * (copyRowWidth + 1); n.n.Load() != want {
		return sample{}, fmt.Errorf("COPY via %s: got %d bytes, want %d", p.Name, n.n.Load(), want)
	}
	return sample{Value: float64(n.n.Load()) / 1e6 / secs, Seconds: secs, Bytes: n.n.Load()}, nil
}

// counter is an io.Writer that counts bytes.
type counter struct{ n atomic.Int64 }

func (c *counter) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return len(p), nil }

// tunnelCeiling sends size bytes from a node tunnel to a client tunnel (two wireguard-go devices
// on loopback UDP with their userspace stacks, as Ferry's node and client use them) over one TCP
// connection, node to client (COPY's direction), and returns MB/s. No PostgreSQL, no proxy.
func tunnelCeiling(ctx context.Context, size int64) (sample, error) {
	nodeKey, err := tunnel.GenerateKey()
	if err != nil {
		return sample{}, fmt.Errorf("tunnel: %w", err)
	}
	clientKey, err := tunnel.GenerateKey()
	if err != nil {
		return sample{}, fmt.Errorf("tunnel: %w", err)
	}
	nodeAddr, clientAddr := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	node, err := tunnel.New(ctx, tunnel.Config{PrivateKey: nodeKey, Addresses: []netip.Addr{nodeAddr}, Promiscuous: true})
	if err != nil {
		return sample{}, err
	}
	defer node.Close()
	if err := node.AddPeer(tunnel.Peer{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(clientAddr, 32)}}); err != nil {
		return sample{}, err
	}
	client, err := tunnel.New(ctx, tunnel.Config{
		PrivateKey: clientKey,
		Addresses:  []netip.Addr{clientAddr},
		Peers: []tunnel.Peer{{
			PublicKey:  nodeKey.PublicKey(),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("100.64.0.0/10")},
			Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), node.Port()),
		}},
	})
	if err != nil {
		return sample{}, err
	}
	defer client.Close()
	chunk := make([]byte, 64<<10)
	node.Stack().SetForwarder(4, func(ctx context.Context, f netstack.Flow) (func(net.Conn), error) {
		return func(c net.Conn) {
			defer c.Close()
			for left := size; left > 0; {
				n := min(left, int64(len(chunk)))
				if _, err := c.Write(chunk[:n]); err != nil {
					return
				}
				left -= n
			}
		}, nil
	})
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t0 := time.Now()
	c, err := client.Stack().DialContext(dctx, "tcp", "100.64.0.7:5432")
	if err != nil {
		return sample{}, fmt.Errorf("tunnel: dial through the tunnel: %w", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Minute))
	got, err := io.Copy(io.Discard, c)
	secs := time.Since(t0).Seconds()
	if err != nil || got != size {
		return sample{}, fmt.Errorf("tunnel: received %d of %d bytes: %v", got, size, err)
	}
	return sample{Value: float64(got) / 1e6 / secs, Seconds: secs, Bytes: got}, nil
}

// memory is a memory figure: how much this process grew holding N connections.
type memory struct {
	Name        string  `json:"name"`
	Conns       int     `json:"connections"`
	Alive       int     `json:"alive_at_measurement"`
	RSSDelta    int64   `json:"rss_delta_bytes"`     // VmRSS after - before
	GoDelta     int64   `json:"go_live_delta_bytes"` // live heap + goroutine stacks after - before
	Goroutines  int     `json:"goroutines_delta"`    // runtime.NumGoroutine after - before
	PerConnRSS  float64 `json:"rss_per_conn_bytes"`  // RSSDelta / Conns
	PerConnLive float64 `json:"go_live_per_conn_bytes"`
	Note        string  `json:"note"`
}

func (m memory) String() string {
	return fmt.Sprintf("%s: %d/%d alive, RSS +%.1f MiB (%.1f KiB/conn), Go live +%.1f MiB (%.1f KiB/conn), %+d goroutines",
		m.Name, m.Alive, m.Conns, float64(m.RSSDelta)/(1<<20), m.PerConnRSS/1024, float64(m.GoDelta)/(1<<20), m.PerConnLive/1024, m.Goroutines)
}

type memSnap struct {
	rss, live int64
	g         int
}

// settle waits (up to 20 s) until the goroutine count is back within 10 of target, so that
// connections closed by the previous step have been torn down before a baseline is taken. It
// reports whether it got there.
func settle(target int) bool {
	for range 80 {
		if runtime.NumGoroutine() <= target+10 {
			return true
		}
		time.Sleep(250 * time.Millisecond)
	}
	return false
}

// snapshot collects garbage, returns freed memory to the OS, and reads VmRSS and the live heap
// plus goroutine stacks.
func snapshot() (memSnap, error) {
	runtime.GC()
	debug.FreeOSMemory()
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return memSnap{}, fmt.Errorf("read RSS: %w (the memory figures need Linux's /proc)", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return memSnap{}, fmt.Errorf("read RSS: %q: %w", line, err)
			}
			return memSnap{rss: kb << 10, live: int64(ms.HeapAlloc + ms.StackInuse), g: runtime.NumGoroutine()}, nil
		}
	}
	return memSnap{}, fmt.Errorf("read RSS: no VmRSS line in /proc/self/status")
}

func (m *memory) fill(before, after memSnap) {
	m.RSSDelta = after.rss - before.rss
	m.GoDelta = after.live - before.live
	m.Goroutines = after.g - before.g
	m.PerConnRSS = float64(m.RSSDelta) / float64(m.Conns)
	m.PerConnLive = float64(m.GoDelta) / float64(m.Conns)
}

// idleMemory opens n TCP connections to Ferry's loopback address and holds them idle before the
// PostgreSQL startup message: each is a client-side accept, a tunnel TCP flow and a node-side
// handler waiting for the startup (no server connection: the emulator's server allows only 100).
// The node closes such connections after its 15 s login timeout, so they are opened, measured and
// checked within it.
func idleMemory(ctx context.Context, inst *installation, n int) (m memory, err error) {
	m = memory{Name: "ferry: idle TCP connections before login", Conns: n,
		Note: "node + client + tunnels in one process (demo.Start); connections opened to the client's loopback address and held before the startup message, measured within the node's 15 s login timeout"}
	before, err := snapshot()
	if err != nil {
		return m, err
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		if !settle(before.g) {
			m.Note += fmt.Sprintf("; %d goroutines were still running 20 s after the connections were closed", runtime.NumGoroutine()-before.g)
		}
	}()
	t0 := time.Now()
	var d net.Dialer
	for i := range n {
		c, err := d.DialContext(ctx, "tcp", inst.env.Resource.Address)
		if err != nil {
			return m, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	time.Sleep(time.Second) // let the last flows reach the node
	after, err := snapshot()
	if err != nil {
		return m, err
	}
	m.fill(before, after)
	// A connection the node has closed reads EOF at once; a live one times out.
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			m.Alive++
		}
	}
	if held := time.Since(t0); held > 14*time.Second {
		m.Note += fmt.Sprintf("; opening and measuring took %v, close to the login timeout", held.Round(time.Millisecond))
	}
	return m, nil
}

// sessionMemory opens n authenticated PostgreSQL sessions on p (pgx's pgconn in this process) and
// holds them idle. Through Ferry the delta includes the node, the client and the emulator's front
// (all in this process); direct includes the front and the pgconn clients, so the difference is
// Ferry's share.
func sessionMemory(ctx context.Context, inst *installation, p *path, n int) (m memory, err error) {
	m = memory{Name: p.Name + ": idle authenticated sessions", Conns: n}
	host, port := p.env["PGHOST"], p.env["PGPORT"]
	cs := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=%s", host, port, p.env["PGUSER"], p.env["PGDATABASE"], p.env["PGSSLMODE"])
	if p.env["PGSSLROOTCERT"] != "" {
		cs += " sslrootcert=" + p.env["PGSSLROOTCERT"]
	}
	cfg, err := pgconn.ParseConfig(cs)
	if err != nil {
		return m, fmt.Errorf("session config: %w", err)
	}
	cfg.Password = p.env["PGPASSWORD"]
	if addr := p.env["PGHOSTADDR"]; addr != "" {
		cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{addr}, nil }
	}
	if p.Name == "ferry" {
		m.Note = "pgx pgconn sessions; the delta covers node + client + the emulator's front + the pgconn clients (one process); subtract the direct row for node + client"
	} else {
		m.Note = "pgx pgconn sessions; the delta covers the emulator's front + the pgconn clients (one process)"
	}
	before, err := snapshot()
	if err != nil {
		return m, err
	}
	conns := make([]*pgconn.PgConn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
		settle(before.g)
	}()
	for i := range n {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		c, err := pgconn.ConnectConfig(cctx, cfg)
		cancel()
		if err != nil {
			return m, fmt.Errorf("session %d via %s: %w", i, p.Name, err)
		}
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond)
	after, err := snapshot()
	if err != nil {
		return m, err
	}
	m.fill(before, after)
	for _, c := range conns {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := c.Exec(cctx, "select 1").ReadAll(); err == nil {
			m.Alive++
		}
		cancel()
	}
	return m, nil
}
