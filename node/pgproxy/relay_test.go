package pgproxy

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func encode(t testing.TB, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	return buf
}

func TestClientToServer(t *testing.T) {
	long := "SELECT '" + strings.Repeat("y", MaxAuditSQL+10) + "'"
	type rec struct{ sql, protocol string }
	tests := []struct {
		name    string
		in      []byte
		max     int64
		want    []rec
		wantErr any
		relayed bool // the whole input reaches the server
	}{
		{"simple query", encode(t, &pgproto3.Query{String: "SELECT 1"}), 1 << 30, []rec{{"SELECT 1", "simple"}}, nil, true},
		{"extended protocol", encode(t, &pgproto3.Parse{Name: "s1", Query: "SELECT $1"}, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("x")}}, &pgproto3.Execute{}, &pgproto3.Sync{}),
			1 << 30, []rec{{"SELECT $1", "extended"}}, nil, true},
		{"copy data and terminate", encode(t, &pgproto3.CopyData{Data: bytes.Repeat([]byte("a,b\n"), 100000)}, &pgproto3.CopyDone{}, &pgproto3.Terminate{}), 1 << 30, nil, nil, true},
		{"sql longer than the audit limit is truncated in the log only", encode(t, &pgproto3.Query{String: long}), 1 << 30,
			[]rec{{long[:MaxAuditSQL] + " …[truncated: message of " + strconv.Itoa(len(long)+1) + " bytes]", "simple"}}, nil, true},
		{"empty query not recorded", encode(t, &pgproto3.Query{String: ""}), 1 << 30, nil, nil, true},
		{"message above the limit", encode(t, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.CopyData{Data: make([]byte, 2000)}), 1000,
			[]rec{{"SELECT 1", "simple"}}, new(*errTooLarge), false},
		{"length below 4", []byte{'Q', 0, 0, 0, 3}, 1 << 30, nil, new(*errBadLength), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			var got []rec
			var term atomic.Bool
			w := bufio.NewWriterSize(&out, relayBufferSize)
			err := clientToServer(bufio.NewReaderSize(bytes.NewReader(tc.in), relayBufferSize), w, tc.max, &term,
				func(sql, protocol string) { got = append(got, rec{sql, protocol}) })
			w.Flush()
			if tc.wantErr == nil && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != nil && !errors.As(err, tc.wantErr) {
				t.Fatalf("error = %v, want %T", err, tc.wantErr)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("recorded %d, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("recorded %.100q, want %.100q", got[i], tc.want[i])
				}
			}
			if tc.relayed && !bytes.Equal(out.Bytes(), tc.in) {
				t.Fatalf("relayed %d bytes differ from the %d sent", out.Len(), len(tc.in))
			}
		})
	}
}
