package faults_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
)

// Load figures: the 500 clients, with -T scaled down from 60 s to 30 s. pgbench's clock
// includes opening the 500 sessions, which takes several seconds on 2 busy cores (each is a TLS
// login upstream and a new PostgreSQL backend).
const (
	loadClients  = 500
	loadDuration = 60 // seconds (pgbench -T): pgbench opens all 500 connections within it, which takes most of 30 s on a loaded 2-core machine
)

// roleSessions counts the demo role's backends on the real server.
func roleSessions(t *testing.T, env *demo.Env) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, env.Emu.SuperuserConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = '"+demo.Role+"'").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(string(res[0].Rows[0][0]))
	return n
}

// TestLoad runs pgbench -S with 500 clients through the full path (client listener, tunnel, node,
// emulator front, PostgreSQL, all in this process but pgbench) and checks that no transaction
// fails and that goroutines and server sessions return to their baseline afterwards. It is the one
// test of the package that does not run in parallel, so the goroutine counts are its own.
func TestLoad(t *testing.T) {
	needBins(t, "pgbench")
	env := startEnv(t, demo.Options{MaxConnections: loadClients + 50})
	conn := client.ConnString(env.Resource)
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "pgbench", append(args, conn)...)
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=60")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	run("-i", "-s", "1", "-q")

	settle := func() int {
		runtime.GC()
		time.Sleep(200 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	baseG, baseS := settle(), roleSessions(t, env)
	out := run("-c", strconv.Itoa(loadClients), "-j", "2", "-S", "-T", strconv.Itoa(loadDuration), "-n")
	m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out)
	done := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	tps := regexp.MustCompile(`tps = ([\d.]+) \(without initial connection time\)`).FindStringSubmatch(out)
	if m == nil || done == nil {
		t.Fatalf("pgbench output lacks the transaction counts:\n%s", out)
	}
	if m[1] != "0" {
		t.Fatalf("%s failed transactions:\n%s", m[1], out)
	}
	if n, _ := strconv.Atoi(done[1]); n == 0 {
		t.Fatalf("no transactions processed:\n%s", out)
	}
	peakG := runtime.NumGoroutine()

	// Back to baseline: goroutines (a few may belong to idle HTTP connections and timers: allow 10)
	// and the role's server sessions.
	deadline := time.Now().Add(30 * time.Second)
	var g, s int
	for {
		g, s = settle(), roleSessions(t, env)
		if g <= baseG+10 && s <= baseS {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("30 s after pgbench ended: %d goroutines (baseline %d), %d server sessions of %s (baseline %d)\n%s", g, baseG, s, demo.Role, baseS, buf)
		}
		time.Sleep(500 * time.Millisecond)
	}
	tpsv := "?"
	if tps != nil {
		tpsv = tps[1]
	}
	t.Logf("pgbench -c %d -j 2 -S -T %d: %s transactions, 0 failed, %s tps; goroutines %d before, %d just after, %d settled; server sessions %d before, %d after",
		loadClients, loadDuration, done[1], tpsv, baseG, peakG, g, baseS, s)
}
