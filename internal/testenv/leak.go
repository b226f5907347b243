package testenv

import (
	"bytes"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// LeakWait bounds how long CheckLeaks waits for goroutines that are still ending.
const LeakWait = 10 * time.Second

// CheckLeaks notes the goroutines running now and, at t's cleanup (after the cleanups registered
// later, which run first), fails t with the stacks of the goroutines that started since and still
// run after LeakWait. Goroutines of other tests (t.Parallel) and idle HTTP keep-alive connections of
// http.DefaultTransport (closed before the check) are not counted.
func CheckLeaks(t testing.TB) {
	t.Helper()
	checkLeaks(t, LeakWait)
}

func checkLeaks(t testing.TB, wait time.Duration) {
	before := map[string]bool{}
	for _, g := range goroutines() {
		before[g.id] = true
	}
	t.Cleanup(func() {
		if t.Failed() {
			return // the failure is reported already; what it left running is no news
		}
		var leaked []goroutine
		deadline := time.Now().Add(wait)
		for {
			if tr, ok := http.DefaultTransport.(*http.Transport); ok {
				tr.CloseIdleConnections()
			}
			leaked = leaked[:0]
			for _, g := range goroutines() {
				if !before[g.id] && !g.ignored() {
					leaked = append(leaked, g)
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(leaked) == 0 {
			return
		}
		sort.Slice(leaked, func(i, j int) bool { return leaked[i].stack < leaked[j].stack })
		var b strings.Builder
		for _, g := range leaked {
			b.WriteString(g.stack)
			b.WriteString("\n\n")
		}
		t.Errorf("%d goroutines still run %s after the test ended:\n%s", len(leaked), wait, b.String())
	})
}

// goroutine is one goroutine of a runtime.Stack dump.
type goroutine struct {
	id    string // "goroutine 42"
	stack string // the whole block, header included
}

// ignored reports goroutines that are not the test's: other tests' runners, and the test
// framework's own.
func (g goroutine) ignored() bool {
	for _, s := range []string{
		"testing.tRunner(",          // another test (t.Parallel), started after the snapshot
		"testing.(*T).Run(",         // the same, waiting for its subtests
		"testing.runFuzzing(",       // the fuzzing engine
		"runtime.ensureSigM(",       // os/signal's watcher, started once
		"os/signal.signal_recv(",    // the same
		"runtime/trace.Start.func1", // a trace the test run asked for
	} {
		if strings.Contains(g.stack, s) {
			return true
		}
	}
	return false
}

// goroutines returns every goroutine's stack.
func goroutines() []goroutine {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []goroutine
	for _, block := range bytes.Split(buf, []byte("\n\n")) {
		s := string(bytes.TrimSpace(block))
		if !strings.HasPrefix(s, "goroutine ") {
			continue
		}
		id, _, _ := strings.Cut(s, " [")
		out = append(out, goroutine{id: id, stack: s})
	}
	return out
}
