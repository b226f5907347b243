//go:build linux

package node_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/node"
)

// keepAliveHolder plays a client that never lets go of its enrollment connection: a cheap, complete
// request every 100 ms on a kept-alive connection (so neither the read nor the idle timeout ever
// fires), reconnecting at once whenever the node closes it. It stops when ctx ends.
func keepAliveHolder(ctx context.Context, wg *sync.WaitGroup, dial dialFunc) {
	defer wg.Done()
	for ctx.Err() == nil {
		raw, err := dial(ctx)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
		stop := context.AfterFunc(ctx, func() { c.Close() })
		br := bufio.NewReader(c)
		for ctx.Err() == nil {
			if _, err := io.WriteString(c, "GET /v1/enroll HTTP/1.1\r\nHost: node\r\n\r\n"); err != nil {
				break
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Close {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		stop()
		c.Close()
	}
}

// TestEnrollmentSlotsNotHeldByKeepAlive: a few sources that fill the enrollment endpoint's total cap
// with kept-alive connections, each sending a cheap request well within every timeout, cannot keep a
// device from enrolling: the endpoint answers one request per connection, so every slot comes free
// after one answer and a waiting connection gets its turn.
func TestEnrollmentSlotsNotHeldByKeepAlive(t *testing.T) {
	const perSource, total = 2, 4
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startLoopbackNode(t, ctx, func(c *node.Config) {
		c.HTTPReadTimeout = node.Duration(10 * time.Minute)
		c.HTTPIdleTimeout = node.Duration(10 * time.Minute)
		c.HTTPMaxConnsPerSource, c.HTTPMaxConns = perSource, total
	})
	addr := n.EnrollAddr().String()

	// total/perSource sources, each at its cap: together they hold every slot.
	actx, stopAttack := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopAttack(); wg.Wait() }()
	var srcs []string
	for i := 0; i < total/perSource; i++ {
		src := otherLoopbackIP(srcs...)
		srcs = append(srcs, src)
		for j := 0; j < perSource; j++ {
			wg.Add(1)
			go keepAliveHolder(actx, &wg, fromSource(src, addr))
		}
	}
	time.Sleep(time.Second) // let them take the slots

	tok, err := n.EnrollToken(ctx, node.DefaultAdmin)
	if err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithTimeout(ctx, cutWait)
	defer lcancel()
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "c"), Runtime: filepath.Join(t.TempDir(), "r")}
	if _, err := client.Login(lctx, dirs, tok, "laptop"); err != nil {
		t.Fatalf("enrollment while %d sources keep the total cap of %d busy with kept-alive connections: %v", len(srcs), total, err)
	}
}
