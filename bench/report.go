//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report is everything one run measured, as written to benchmarks.json.
type report struct {
	Date        string       `json:"date"`         // RFC 3339, UTC
	CPUs        int          `json:"cpus"`         // runtime.NumCPU
	LoadAvg     string       `json:"load_average"` // /proc/loadavg's 1, 5 and 15 minute figures before the run; "" where there is none
	OS          string       `json:"os"`
	Go          string       `json:"go"`
	Postgres    string       `json:"postgres"`
	Command     string       `json:"command"`
	Settings    settings     `json:"settings"`
	Paths       []pathInfo   `json:"paths"`
	DNSServers  []pathInfo   `json:"dns_servers"` // the "paths" of the dns_qps figure
	Figures     []*figure    `json:"figures"`
	Memory      []memory     `json:"memory"`
	NotMeasured []skipped    `json:"not_measured"`
	Targets     []targetLine `json:"targets"`
}

type settings struct {
	PgbenchSeconds int `json:"pgbench_seconds"`
	Rounds         int `json:"rounds"`
	CopyMB         int `json:"copy_mb"`
	IdleConns      int `json:"idle_connections"`
	Sessions       int `json:"sessions"`
}

type pathInfo struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

type skipped struct {
	What   string `json:"what"`
	Reason string `json:"reason"`
}

// figure is one measured quantity across paths.
type figure struct {
	Key     string              `json:"key"`
	Title   string              `json:"title"`
	Unit    string              `json:"unit"`
	Samples map[string][]sample `json:"samples"`          // by path name, in run order
	Errors  map[string][]string `json:"errors,omitempty"` // by path name
}

type targetLine struct {
	Goal   string  `json:"goal"`
	Ratio  float64 `json:"measured"` // the measured ratio (KiB for memory, queries/s for DNS); 0 when not measured
	Want   float64 `json:"want"`
	Met    *bool   `json:"met"` // nil when not measured
	Detail string  `json:"detail"`
}

// loadAverage is the machine's load average (1, 5 and 15 minutes) from /proc/loadavg, or "" where
// the system has none.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func newReport(o options) *report {
	return &report{
		Date:     time.Now().UTC().Format(time.RFC3339),
		CPUs:     runtime.NumCPU(),
		LoadAvg:  loadAverage(),
		OS:       runtime.GOOS + "/" + runtime.GOARCH,
		Go:       runtime.Version(),
		Command:  "go run ./bench " + strings.Join(os.Args[1:], " "),
		Settings: settings{PgbenchSeconds: int(o.duration / time.Second), Rounds: o.rounds, CopyMB: o.copyMB, IdleConns: o.idleConns, Sessions: o.sessions},
	}
}

func (r *report) figure(key, title, unit string) *figure {
	f := &figure{Key: key, Title: title, Unit: unit, Samples: map[string][]sample{}, Errors: map[string][]string{}}
	r.Figures = append(r.Figures, f)
	return f
}

func (r *report) notMeasured(what, reason string) {
	r.NotMeasured = append(r.NotMeasured, skipped{What: what, Reason: reason})
}

func (f *figure) add(path string, s sample) { f.Samples[path] = append(f.Samples[path], s) }
func (f *figure) fail(path string, err error) {
	f.Errors[path] = append(f.Errors[path], err.Error())
}

// mean returns the mean value (and mean latency) of path's samples; ok is false without samples.
func (f *figure) mean(path string) (v, lat float64, ok bool) {
	v, ok = f.meanOf(path, func(s sample) float64 { return s.Value })
	lat, _ = f.meanOf(path, func(s sample) float64 { return s.LatencyMs })
	return v, lat, ok
}

// meanOf returns the mean of pick over path's samples; ok is false without samples.
func (f *figure) meanOf(path string, pick func(sample) float64) (v float64, ok bool) {
	ss := f.Samples[path]
	if len(ss) == 0 {
		return 0, false
	}
	for _, s := range ss {
		v += pick(s)
	}
	return v / float64(len(ss)), true
}

// diff is a-b of two paths' means of pick for figure key.
func (r *report) diff(key, a, b string, pick func(sample) float64) (float64, bool) {
	f := r.find(key)
	if f == nil {
		return 0, false
	}
	va, ok1 := f.meanOf(a, pick)
	vb, ok2 := f.meanOf(b, pick)
	return va - vb, ok1 && ok2
}

func (r *report) find(key string) *figure {
	for _, f := range r.Figures {
		if f.Key == key {
			return f
		}
	}
	return nil
}

// ratio is a/b of two paths' means for figure key.
func (r *report) ratio(key, a, b string) (float64, bool) {
	f := r.find(key)
	if f == nil {
		return 0, false
	}
	va, _, ok1 := f.mean(a)
	vb, _, ok2 := f.mean(b)
	if !ok1 || !ok2 || vb == 0 {
		return 0, false
	}
	return va / vb, true
}

// finish evaluates the targets (goals, not assertions).
func (r *report) finish() {
	add := func(goal string, want float64, got float64, ok bool, atMost bool, detail string) {
		t := targetLine{Goal: goal, Want: want, Detail: detail}
		if ok {
			t.Ratio = got
			met := got >= want
			if atMost {
				met = got <= want
			}
			t.Met = &met
		}
		r.Targets = append(r.Targets, t)
	}
	v, ok := r.ratio("pgbench_select_tps", "ferry", "direct")
	add("pgbench -S through Ferry ≥ 0.8× direct", 0.8, v, ok, false, "")
	v, ok = r.ratio("pgbench_select_tps", "ferry", "ssh -L")
	add("pgbench -S through Ferry ≥ 1.5× ssh -L", 1.5, v, ok, false, "")
	v, ok = r.ratio("pgbench_select_tps", "ferry", "pgbouncer")
	add("pgbench -S through Ferry ≥ pgbouncer (session mode)", 1.0, v, ok, false, "")
	v, ok = r.ratio("pgbench_connect_tps", "ferry", "direct")
	add("pgbench -C through Ferry ≥ 0.5× direct", 0.5, v, ok, false, "")
	v, ok = r.ratio("pgbench_select_tps", vnPathName, "direct")
	add("pgbench -S through Ferry in VN mode ≥ 0.8× direct", 0.8, v, ok, false, "")
	v, ok = r.ratio("pgbench_connect_tps", vnPathName, "direct")
	add("pgbench -C through Ferry in VN mode ≥ 0.5× direct", 0.5, v, ok, false, "")
	// Issue 20's targets.
	v, ok = r.ratio("pgbench_select_tps", "ferry", "ssh -L")
	add("pgbench -S -c 8 through Ferry ≥ 1.0× ssh -L", 1.0, v, ok, false, "")
	v, ok = r.ratio("pgbench_select_tps", "ferry", "direct")
	add("pgbench -S -c 8 through Ferry ≥ 0.6× direct", 0.6, v, ok, false, "")
	v, ok = r.ratio("pgbench_select_tps", procPathName, "direct")
	add("pgbench -S -c 8 through Ferry, node as its own process, ≥ 0.6× direct", 0.6, v, ok, false, "")
	v, ok = r.ratio("pgbench_select_tps", vnPathName, "ferry")
	add("pgbench -S -c 8 in virtual networking mode ≥ 0.9× loopback mode", 0.9, v, ok, false, "")
	p50 := func(s sample) float64 { return s.P50Ms * 1000 }
	for _, p := range []string{"ferry", procPathName} {
		v, ok = r.diff("latency_c1", p, "direct", p50)
		add("pgbench -S -c 1: added p50 over direct ≤ 100 µs — "+p+" (µs)", 100, v, ok, true, "")
	}
	v, ok = r.ratio("copy_out_mbps", "ferry", "direct")
	add("COPY TO STDOUT through Ferry ≥ 0.8× direct", 0.8, v, ok, false, "")
	var ceil, cp float64
	var ok1, ok2 bool
	if f := r.find("tunnel_raw_mbps"); f != nil {
		ceil, _, ok1 = f.mean("ferry")
	}
	if f := r.find("copy_out_mbps"); f != nil {
		cp, _, ok2 = f.mean("ferry")
	}
	v = 0
	if ok1 && ok2 && ceil > 0 {
		v = cp / ceil
	}
	add("COPY through Ferry ≥ 0.9× the tunnel's raw TCP ceiling", 0.9, v, ok1 && ok2 && ceil > 0, false, "")
	// Issue 20 measured 126 MB/s through the tunnel alone; GSO/GRO is to double it.
	add("Raw TCP through the tunnel ≥ 2× issue 20's 126 MB/s (MB/s)", 2*126, ceil, ok1, false,
		"an absolute figure: compare it on a machine like the issue's quiet 2-core one")
	var idle *memory
	for i := range r.Memory {
		if strings.HasPrefix(r.Memory[i].Name, "ferry: idle TCP") {
			idle = &r.Memory[i]
		}
	}
	if idle != nil {
		add("≤ 64 KiB of node RSS per idle proxied connection (KiB)", 64, idle.PerConnRSS/1024, true, true,
			"node and client share one process here, so this is node + client + both tunnel stacks: an upper bound for the node")
	} else {
		add("≤ 64 KiB of node RSS per idle proxied connection (KiB)", 64, 0, false, true, "not measured")
	}
	for _, srv := range []string{dnsResolver, dnsResolverVN} {
		var qps float64
		ok := false
		if f := r.find("dns_qps"); f != nil {
			qps, _, ok = f.mean(srv)
		}
		add("Resolver ≥ 50,000 queries/s — "+srv+" (queries/s)", 50000, qps, ok, false, "")
		v, ok := r.ratio("dns_qps", srv, dnsDnsmasq)
		add("Resolver within 2× of dnsmasq, i.e. ≥ 0.5× its queries/s — "+srv, 0.5, v, ok, false, "")
	}
}

func (r *report) json() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode results: %w", err)
	}
	return append(b, '\n'), nil
}

// columns orders the paths: direct first (the baseline), then Ferry, then the peers, socket last.
func (r *report) columns() []string {
	rank := map[string]int{"direct": 0, "ferry": 1, procPathName: 2, procPGPathName: 3, vnPathName: 4, "ssh -L": 5, "pgbouncer": 6, "socket": 7}
	var names []string
	for _, p := range r.Paths {
		names = append(names, p.Name)
	}
	slices.SortStableFunc(names, func(a, b string) int { return rank[a] - rank[b] })
	return names
}

func (r *report) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Benchmarks\n\n")
	w("Ferry side by side with the paths people use instead, measured in one run on one machine by\n")
	w("`go run ./bench` (see bench/main.go). Absolute numbers drift on shared machines; the ratios to\n")
	w("**direct** (same run, paths alternating) are the figures to read.\n\n")
	w("- Date: %s\n- CPUs: %d (%s)\n- %s, PostgreSQL %s\n- Command: `%s`\n", r.Date, r.CPUs, r.OS, r.Go, r.Postgres, r.Command)
	if r.LoadAvg != "" {
		w("- Load average before the run (1, 5, 15 min): %s; figures from a loaded machine are lower and noisier\n", r.LoadAvg)
	}
	w("- pgbench runs: %d s each, %d round(s); COPY and raw tunnel transfer: %d MB (10^6 bytes)\n\n", r.Settings.PgbenchSeconds, r.Settings.Rounds, r.Settings.CopyMB)
	w("## Paths\n\n")
	for _, name := range r.columns() {
		for _, p := range r.Paths {
			if p.Name == name {
				w("- **%s**: %s\n", p.Name, p.Description)
			}
		}
	}
	cols := r.columns()
	w("\n## Results\n\nEach cell: the mean over rounds, then (ratio to direct). For latency lower is better.\n\n")
	w("| Figure |")
	for _, c := range cols {
		w(" %s |", c)
	}
	w("\n|---|")
	for range cols {
		w("---:|")
	}
	w("\n")
	// sub writes a row of another quantity of f's samples, with its ratio to direct.
	sub := func(f *figure, title string, pick func(sample) float64, format string) {
		w("| %s |", title)
		base, bok := f.meanOf("direct", pick)
		for _, c := range cols {
			v, ok := f.meanOf(c, pick)
			switch {
			case !ok && len(f.Errors[c]) > 0:
				w(" failed |")
			case !ok || v == 0: // not measured on this path (e.g. node CPU where the node is not a process of its own)
				w(" — |")
			case bok && base > 0:
				w(" "+format+" (%.2f×) |", v, v/base)
			default:
				w(" "+format+" |", v)
			}
		}
		w("\n")
	}
	for _, f := range r.Figures {
		if strings.HasPrefix(f.Key, "dns_") {
			continue // own section
		}
		row := func(title string, pick func(v, lat float64) float64, format string) {
			w("| %s |", title)
			_, dl, _ := f.mean("direct")
			dv, _, dok := f.mean("direct")
			base := pick(dv, dl)
			for _, c := range cols {
				v, lat, ok := f.mean(c)
				switch {
				case !ok && len(f.Errors[c]) > 0:
					w(" failed |")
				case !ok:
					w(" — |")
				case dok && base > 0:
					w(" "+format+" (%.2f×) |", pick(v, lat), pick(v, lat)/base)
				default:
					w(" "+format+" |", pick(v, lat))
				}
			}
			w("\n")
		}
		switch {
		case f.Key == "latency_c1":
			row(f.Title, func(v, _ float64) float64 { return v }, "%.3f")
			sub(f, strings.Replace(f.Title, "p50", "p99", 1), func(s sample) float64 { return s.P99Ms }, "%.3f")
			sub(f, strings.Replace(f.Title, "latency p50", "latency avg", 1), func(s sample) float64 { return s.LatencyMs }, "%.3f")
		case strings.HasPrefix(f.Key, "pgbench"):
			row(f.Title, func(v, _ float64) float64 { return v }, "%.1f")
			row(strings.Replace(f.Title, ": TPS", ": latency avg, ms", 1), func(_, lat float64) float64 { return lat }, "%.3f")
			if _, ok := f.meanOf(procPathName, func(s sample) float64 { return s.NodeCPUus }); ok && f.Key == "pgbench_select_tps" {
				sub(f, strings.Replace(f.Title, ": TPS", ": node process CPU per transaction, µs", 1), func(s sample) float64 { return s.NodeCPUus }, "%.0f")
			}
			if f.Key == "pgbench_select_tps" && slices.ContainsFunc(cols, func(c string) bool {
				v, _ := f.meanOf(c, func(s sample) float64 { return s.AuditPerSec })
				return v > 0
			}) {
				sub(f, strings.Replace(f.Title, ": TPS", ": audit records written/s", 1), func(s sample) float64 { return s.AuditPerSec }, "%.0f")
			}
			if f.Key == "pgbench_connect_tps" {
				sub(f, strings.Replace(f.Title, ": TPS", ": connection time avg, ms", 1), func(s sample) float64 { return s.ConnMs }, "%.3f")
			}
		default:
			row(f.Title, func(v, _ float64) float64 { return v }, "%.1f")
		}
	}
	var errs []string
	for _, f := range r.Figures {
		if strings.HasPrefix(f.Key, "dns_") {
			continue
		}
		for _, c := range cols {
			for _, e := range f.Errors[c] {
				errs = append(errs, fmt.Sprintf("- %s via %s: %s", f.Title, c, e))
			}
		}
	}
	if len(errs) > 0 {
		w("\nFailures:\n\n%s\n", strings.Join(errs, "\n"))
	}
	if f := r.find("tunnel_raw_mbps"); f != nil {
		if v, _, ok := f.mean("ferry"); ok {
			if cp := r.find("copy_out_mbps"); cp != nil {
				if fv, _, ok := cp.mean("ferry"); ok {
					w("\nCOPY through Ferry reached %.2f× the tunnel's raw TCP ceiling (%.1f MB/s).\n", fv/v, v)
				}
			}
		}
	}
	if f := r.find("pgbench_connect_tps"); f != nil {
		conn := func(s sample) float64 { return s.ConnMs }
		if sock, ok := f.meanOf("socket", conn); ok {
			var parts []string
			for _, c := range cols {
				if v, ok := f.meanOf(c, conn); ok && c != "socket" {
					parts = append(parts, fmt.Sprintf("%s %+.2f ms", c, v-sock))
				}
			}
			w("\npgbench -C: every path pays the server's own backend start, %.2f ms per connection on the unix socket "+
				"(fork and PostgreSQL's start-up: about 800 page faults, each costly on a virtual machine; see bench/main.go). "+
				"Each path's own connection cost, its connection time minus the socket's: %s.\n", sock, strings.Join(parts, ", "))
		}
	}
	if v, ok := r.ratio("pgbench_select_tps", procPGPathName, procPathName); ok {
		w("\nWith its catalog and audit log on PostgreSQL the node process reached %.2f× its pgbench -S TPS with them in SQLite (%s vs %s, same run)", v, procPGPathName, procPathName)
		if f := r.find("pgbench_select_tps"); f != nil {
			pick := func(s sample) float64 { return s.AuditPerSec }
			a, aok := f.meanOf(procPGPathName, pick)
			b, bok := f.meanOf(procPathName, pick)
			if aok && bok && a > 0 && b > 0 {
				w("; its audit log took %.0f query records/s on PostgreSQL and %.0f on SQLite", a, b)
			}
		}
		w(".\n")
	}
	if vs, ok := r.ratio("pgbench_select_tps", vnPathName, "ferry"); ok {
		w("\nIn virtual networking mode Ferry reached %.2f× its loopback-mode pgbench -S TPS", vs)
		if vc, ok := r.ratio("pgbench_connect_tps", vnPathName, "ferry"); ok {
			w(" and %.2f× its pgbench -C TPS", vc)
		}
		w(".\n")
	}
	r.dnsMarkdown(w)
	if len(r.Memory) > 0 {
		w("\n## Memory\n\nGrowth of the bench process (VmRSS, and the Go runtime's live heap + goroutine stacks after a full GC) while holding the connections.\n\n")
		w("| Connections | Held | Alive at measurement | RSS Δ | RSS per conn | Go live per conn | Goroutines per conn |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, m := range r.Memory {
			w("| %s | %d | %d | %.1f MiB | %.1f KiB | %.1f KiB | %.1f |\n", m.Name, m.Conns, m.Alive,
				float64(m.RSSDelta)/(1<<20), m.PerConnRSS/1024, m.PerConnLive/1024, float64(m.Goroutines)/float64(m.Conns))
		}
		w("\n")
		for _, m := range r.Memory {
			w("- %s: %s\n", m.Name, m.Note)
		}
	}
	w("\n## Targets (goals, not assertions)\n\n| Goal | Measured | Met |\n|---|---:|---|\n")
	for _, t := range r.Targets {
		met, got := "not measured", "—"
		if t.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*t.Met]
			got = fmt.Sprintf("%.2f", t.Ratio)
			if t.Want >= 1000 {
				got = fmt.Sprintf("%.0f", t.Ratio)
			}
		}
		if t.Detail != "" && t.Met != nil {
			met += " (" + t.Detail + ")"
		}
		w("| %s | %s | %s |\n", t.Goal, got, met)
	}
	if len(r.NotMeasured) > 0 {
		w("\n## Not measured\n\n")
		for _, s := range r.NotMeasured {
			w("- %s: %s\n", s.What, s.Reason)
		}
	}
	w("\nRaw numbers: docs/benchmarks.json.\n")
	return b.String()
}

// dnsMarkdown writes the DNS section: queries per second per server and the ratio to dnsmasq.
func (r *report) dnsMarkdown(w func(format string, args ...any)) {
	f := r.find("dns_qps")
	if f == nil || len(r.DNSServers) == 0 {
		return
	}
	w("\n## DNS\n\n%s. Every server gets the same query file (one A query per alias, in turn) and the same ", f.Title)
	w("dnsperf settings (one socket, one thread, 100 queries outstanding, 2 s timeout); servers alternate.\n\n")
	for _, s := range r.DNSServers {
		w("- **%s**: %s\n", s.Name, s.Description)
	}
	w("\n| Server | queries/s | ratio to dnsmasq | latency avg, ms | lost |\n|---|---:|---:|---:|---:|\n")
	base, _, bok := f.mean(dnsDnsmasq)
	for _, s := range r.DNSServers {
		v, lat, ok := f.mean(s.Name)
		if !ok {
			w("| %s | failed | | | |\n", s.Name)
			continue
		}
		ratio := "—"
		if bok && base > 0 {
			ratio = fmt.Sprintf("%.2f×", v/base)
		}
		var lost int64
		for _, x := range f.Samples[s.Name] {
			lost += x.Lost
		}
		w("| %s | %.0f | %s | %.3f | %d |\n", s.Name, v, ratio, lat, lost)
	}
	for _, s := range r.DNSServers {
		for _, e := range f.Errors[s.Name] {
			w("\n- failed via %s: %s", s.Name, e)
		}
	}
}
