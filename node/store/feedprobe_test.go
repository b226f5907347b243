package store_test

import (
	"context"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node/store"
)

// stallRelay relays connections from a Unix socket of its own to the test server's, and can make
// the connections open so far go silent (stall): nothing passes any more, nothing is closed, as when
// a route drops or a peer stops answering without a FIN or RST. Later connections pass.
type stallRelay struct {
	dir string
	mu  sync.Mutex
	old []chan struct{}
}

func newStallRelay(t *testing.T, target string) *stallRelay {
	t.Helper()
	r := &stallRelay{dir: t.TempDir()}
	ln, err := net.Listen("unix", filepath.Join(r.dir, ".s.PGSQL.5432"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			stall := make(chan struct{})
			r.mu.Lock()
			r.old = append(r.old, stall)
			r.mu.Unlock()
			for _, p := range [][2]net.Conn{{c, u}, {u, c}} {
				wg.Add(1)
				go func(dst, src net.Conn) {
					defer wg.Done()
					defer dst.Close()
					buf := make([]byte, 32<<10)
					for {
						n, err := src.Read(buf)
						select {
						case <-stall: // hold the connection open and silent until the test ends
							<-t.Context().Done()
							return
						default:
						}
						if n > 0 {
							if _, werr := dst.Write(buf[:n]); werr != nil {
								return
							}
						}
						if err != nil {
							return
						}
					}
				}(p[0], p[1])
			}
			wg.Add(1)
			go func() { // every pair is let go when the test ends
				defer wg.Done()
				<-t.Context().Done()
				c.Close()
				u.Close()
			}()
		}
	}()
	return r
}

// stall makes every connection opened so far silent.
func (r *stallRelay) stall() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.old {
		close(s)
	}
	r.old = nil
}

// TestWatchNoticesSilentFeedConnection: the change feed's connection going silent (no FIN, no RST)
// is noticed by its ping, replaced, and signalled, and the feed carries changes again; TCP
// keepalives alone would take most of an hour.
func TestWatchNoticesSilentFeedConnection(t *testing.T) {
	direct := pgtest.Start(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	relay := newStallRelay(t, filepath.Join(q.Get("host"), ".s.PGSQL."+q.Get("port")))
	q.Set("host", relay.dir)
	q.Set("port", "5432")
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := store.Open(ctx, store.Options{URL: u.String(), FeedProbe: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ch, err := db.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	relay.stall()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatal("the feed ended")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no signal within 20 s after the feed's connection went silent")
	}
	other := open(t, direct)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Notify(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal("no wake-up after the feed was replaced")
	}
}
