package splice

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// spliceGoroutines counts the goroutines running a splice's copy.
func spliceGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "splice.(*Pool).copy")
}

// noSpliceLeft fails unless every copy goroutine has ended (bounded wait: they end as Splice returns).
func noSpliceLeft(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for spliceGoroutines() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d copy goroutines left after Splice returned", spliceGoroutines())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSpliceAttacks: a peer that half-closes, never reads, dribbles single bytes or resets the
// connection mid-copy gets what it sent passed on, holds no memory beyond the sockets' own
// buffers, and leaves no goroutine once Splice returns.
func TestSpliceAttacks(t *testing.T) {
	t.Run("half-close keeps the other direction", func(t *testing.T) {
		client, server, done := spliced(t, context.Background(), 10*time.Second)
		client.Write([]byte("request"))
		client.CloseWrite()
		req, err := io.ReadAll(server) // EOF passed on as a half-close
		if err != nil || string(req) != "request" {
			t.Fatalf("server got %q, %v", req, err)
		}
		answer := bytes.Repeat([]byte("answer"), 200<<10)
		go func() { server.Write(answer); server.CloseWrite() }()
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, answer) {
			t.Fatalf("client got %d bytes (%v), want the %d sent after its half-close", len(got), err, len(answer))
		}
		wait(t, done, "both half-closed")
		noSpliceLeft(t)
	})
	t.Run("one byte at a time", func(t *testing.T) {
		client, server, done := spliced(t, context.Background(), 10*time.Second)
		msg := []byte("Q\x00\x00\x00\x0dSELECT 1;\x00" + strings.Repeat("z", 3000))
		go func() {
			for i := range msg {
				if _, err := client.Write(msg[i : i+1]); err != nil {
					return
				}
			}
			client.CloseWrite()
		}()
		got, err := io.ReadAll(server)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("server got %d bytes (%v), want the %d written one at a time", len(got), err, len(msg))
		}
		server.CloseWrite()
		wait(t, done, "both half-closed")
		noSpliceLeft(t)
	})
	t.Run("client never reads", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		client, server, done := spliced(t, ctx, time.Hour)
		_ = client // never read
		// The server's writes must stop once the sockets' buffers are full: the splice holds no
		// more than one buffer of its own.
		const limit = 256 << 20
		chunk := make([]byte, 1<<20)
		written := 0
		server.SetWriteDeadline(time.Now().Add(3 * time.Second))
		for written < limit {
			n, err := server.Write(chunk)
			written += n
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("write: %v", err)
				}
				break
			}
		}
		if written >= limit {
			t.Fatalf("the splice took %d bytes for a client that reads nothing", written)
		}
		cancel()
		wait(t, done, "after ctx ended")
		noSpliceLeft(t)
	})
	for _, side := range []string{"server", "client"} {
		t.Run(side+" resets mid-copy", func(t *testing.T) {
			client, server, done := spliced(t, context.Background(), 200*time.Millisecond)
			resetter, other := server, client
			if side == "client" {
				resetter, other = client, server
			}
			// In flight both ways, and neither end reads: the copies block in the middle.
			go other.Write(bytes.Repeat([]byte("x"), 16<<20))
			go resetter.Write(bytes.Repeat([]byte("y"), 16<<20))
			time.Sleep(50 * time.Millisecond)
			resetter.SetLinger(0)
			resetter.Close() // RST
			wait(t, done, "after a reset")
			other.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.Copy(io.Discard, other); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the other side was not closed after the reset")
			}
			noSpliceLeft(t)
		})
	}
	t.Run("ctx ended before the splice", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, _, done := spliced(t, ctx, time.Hour)
		wait(t, done, "ctx already ended")
		noSpliceLeft(t)
	})
}
