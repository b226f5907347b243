package pgframe

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func enc(t *testing.T, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// step is bytes passing one way; want is Boundary after it.
type step struct {
	client bool
	data   []byte
	want   bool
}

func TestBoundary(t *testing.T) {
	startup := enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "u", "database": "d"}})
	ssl := enc(t, &pgproto3.SSLRequest{})
	gss := enc(t, &pgproto3.GSSEncRequest{})
	cancel := enc(t, &pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}})
	login := enc(t, &pgproto3.AuthenticationOk{}, &pgproto3.ParameterStatus{Name: "server_version", Value: "17"},
		&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	row := enc(t, &pgproto3.DataRow{Values: [][]byte{[]byte("hello world")}})
	query := enc(t, &pgproto3.Query{String: "SELECT 1"})
	tests := []struct {
		name  string
		steps []step
	}{
		{"nothing sent yet", []step{{true, nil, false}}},
		{"startup sent, no answer yet", []step{{true, startup, true}}},
		{"half a startup", []step{{true, startup[:len(startup)-2], false}, {true, startup[len(startup)-2:], true}}},
		{"SSL refused then startup", []step{{true, ssl, false}, {false, []byte{'N'}, false}, {true, startup, true}, {false, login, true}}},
		{"SSL and GSS refused", []step{{true, gss, false}, {false, []byte{'N'}, false}, {true, ssl, false}, {false, []byte{'N'}, false}, {true, startup, true}}},
		{"SSL accepted: TLS from here", []step{{true, ssl, false}, {false, []byte{'S'}, false}, {true, startup, false}, {false, login, false}}},
		{"cancel request", []step{{true, cancel, false}}},
		{"mid message", []step{{true, startup, true}, {false, login, true}, {true, query, true}, {false, row[:7], false}, {false, row[7:], true}}},
		{"header split", []step{{true, startup, true}, {false, row[:3], false}, {false, row[3:], true}}},
		{"server speaks first", []step{{false, login, false}, {true, startup, false}}},
		{"startup length junk", []step{{true, []byte{0, 0, 0, 3, 0, 3, 0, 0}, false}, {true, startup, false}}},
		{"server length junk", []step{{true, startup, true}, {false, []byte{'Z', 0, 0, 0, 2}, false}, {false, row, false}}},
	}
	for _, tc := range tests {
		for _, bytewise := range []bool{false, true} {
			var tr Tracker
			for i, s := range tc.steps {
				feed := tr.Server
				if s.client {
					feed = tr.Client
				}
				if bytewise {
					for j := range s.data {
						feed(s.data[j : j+1])
					}
				} else {
					feed(s.data)
				}
				if got := tr.Boundary(); got != s.want {
					t.Errorf("%s (bytewise %v): after step %d Boundary() = %v, want %v", tc.name, bytewise, i, got, s.want)
				}
			}
		}
	}
}

func TestServerAllocs(t *testing.T) {
	var tr Tracker
	tr.Client(enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "u"}}))
	row := enc(t, &pgproto3.DataRow{Values: [][]byte{[]byte("x")}}, &pgproto3.DataRow{Values: [][]byte{[]byte("y")}})
	if n := testing.AllocsPerRun(100, func() { tr.Server(row) }); n != 0 {
		t.Fatalf("Server allocates %v times per call, want 0", n)
	}
}
