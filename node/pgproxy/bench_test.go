package pgproxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"

	"github.com/ferryhq/ferry/node/audit"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// BenchmarkRelay measures the client-to-server path of the relay (framing,
// size check, buffering) with a COPY FROM STDIN stream of CopyData messages
// over loopback TCP: client -> relay -> sink. Bytes/s is of the stream.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{100, 8 << 10, 64 << 10, 1 << 20} {
		b.Run("CopyData="+strconv.Itoa(size), func(b *testing.B) {
			var stream []byte
			msg := &pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), size)}
			for len(stream) < 4<<20 {
				stream, _ = msg.Encode(stream)
			}
			client, proxyClient := loopbackPair(b)
			proxyServer, sink := loopbackPair(b)
			p := New(Config{Logger: slog.New(slog.DiscardHandler)})
			relayed := make(chan string, 1)
			go func() {
				relayed <- p.relay(context.Background(), proxyClient, proxyServer, newTracker(0, false, func(audit.Query) {}), &relayStats{}, "bench")
			}()
			received := make(chan int64, 1)
			go func() {
				n, _ := io.Copy(io.Discard, sink)
				received <- n
			}()
			b.SetBytes(int64(len(stream)))
			b.ResetTimer()
			for range b.N {
				if _, err := client.Write(stream); err != nil {
					b.Fatal(err)
				}
			}
			client.(*net.TCPConn).CloseWrite()
			n := <-received
			b.StopTimer()
			if want := int64(b.N) * int64(len(stream)); n != want {
				b.Fatalf("sink received %d bytes, want %d", n, want)
			}
			sink.Close()
			client.Close()
			<-relayed
		})
	}
}

// BenchmarkCopyFrom measures COPY FROM STDIN of 4 MiB into a real
// PostgreSQL, directly over TLS and through the proxy (which adds a loopback
// hop and the relay), to show the proxy's share of an end-to-end transfer.
func BenchmarkCopyFrom(b *testing.B) {
	pg := startPostgres(b)
	tp := startProxy(b, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
	ctx := context.Background()
	var rows bytes.Buffer
	for i := 0; rows.Len() < 4<<20; i++ {
		fmt.Fprintf(&rows, "%d\t%s\n", i, bytes.Repeat([]byte("v"), 90))
	}
	direct, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%d user=mi_user dbname=appdb sslmode=verify-full", testHost, pg.port))
	if err != nil {
		b.Fatal(err)
	}
	direct.Password = pg.token
	direct.TLSConfig = pg.target().tlsConfig()
	direct.Fallbacks = nil
	direct.DialFunc = pg.dial
	direct.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	viaProxy, err := pgconn.ParseConfig(tp.connString("sslmode=disable dbname=appdb"))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		cfg  *pgconn.Config
	}{{"direct", direct}, {"proxy", viaProxy}} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := pgconn.ConnectConfig(ctx, bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			if _, err := c.Exec(ctx, "CREATE UNLOGGED TABLE IF NOT EXISTS bench_"+bc.name+" (id int, v text)").ReadAll(); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(rows.Len()))
			b.ResetTimer()
			for range b.N {
				if _, err := c.CopyFrom(ctx, bytes.NewReader(rows.Bytes()), "COPY bench_"+bc.name+" FROM STDIN"); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if _, err := c.Exec(ctx, "TRUNCATE bench_"+bc.name).ReadAll(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
