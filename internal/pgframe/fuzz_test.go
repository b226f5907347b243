package pgframe

import (
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// framedRef is an independent, whole-stream reading of what Boundary promises: the client's bytes
// hold encryption requests and then a whole protocol-3 StartupMessage, and the server's bytes are
// one 'N' per request followed by whole typed messages. It is the property the relay relies on
// to write a FATAL: when Boundary says yes, framedRef must too.
func framedRef(c, s []byte) bool {
	replies := 0
	for {
		if len(c) < 8 {
			return false
		}
		length, code := binary.BigEndian.Uint32(c), binary.BigEndian.Uint32(c[4:])
		if length < 8 || length > maxStartup {
			return false
		}
		if (code == sslRequestCode || code == gssEncRequestCode) && length == 8 {
			replies++
			c = c[8:]
			continue
		}
		if code>>16 != 3 || uint32(len(c)) < length {
			return false
		}
		break
	}
	for range replies {
		if len(s) == 0 || s[0] != 'N' {
			return false
		}
		s = s[1:]
	}
	for len(s) > 0 {
		if len(s) < 5 {
			return false
		}
		length := binary.BigEndian.Uint32(s[1:])
		if length < 4 || uint64(len(s)-1) < uint64(length) {
			return false
		}
		s = s[1+length:]
	}
	return true
}

// FuzzTracker feeds the tracker a script of chunks, each going one way (the first byte of a step:
// its high bit the direction, the rest the chunk's length), and checks after every chunk that it
// neither panics nor reports a boundary the streams do not have.
func FuzzTracker(f *testing.F) {
	enc := func(msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
		var b []byte
		for _, m := range msgs {
			var err error
			if b, err = m.Encode(b); err != nil {
				f.Fatal(err)
			}
		}
		return b
	}
	step := func(client bool, data []byte) []byte {
		var out []byte
		for len(data) > 0 {
			n := min(len(data), 0x7f)
			h := byte(n)
			if client {
				h |= 0x80
			}
			out = append(append(out, h), data[:n]...)
			data = data[n:]
		}
		return out
	}
	startup := enc(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "u", "database": "d"}})
	login := enc(&pgproto3.AuthenticationOk{}, &pgproto3.ParameterStatus{Name: "server_version", Value: "17"},
		&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	copyData := enc(&pgproto3.CopyOutResponse{ColumnFormatCodes: []uint16{0}}, &pgproto3.CopyData{Data: []byte("1\t2\n")},
		&pgproto3.CopyData{Data: make([]byte, 300)}, &pgproto3.CopyDone{}, &pgproto3.CommandComplete{CommandTag: []byte("COPY 2")})
	huge := []byte{'D', 0x7f, 0xff, 0xff, 0xff, 0, 1}
	for _, seed := range [][]byte{
		append(step(true, startup), step(false, login)...),
		append(append(step(true, startup), step(false, login)...), step(false, copyData)...),
		append(append(append(step(true, enc(&pgproto3.SSLRequest{})), step(false, []byte{'N'})...), step(true, startup)...), step(false, login)...),
		append(append(step(true, enc(&pgproto3.GSSEncRequest{})), step(false, []byte{'G'})...), step(false, login)...),
		append(step(true, enc(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}})), step(false, login)...),
		append(step(true, startup), step(false, huge)...),
		append(step(false, []byte{'N'}), step(true, startup)...),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, script []byte) {
		var tr Tracker
		var c, s []byte
		for len(script) > 0 {
			client, n := script[0]&0x80 != 0, int(script[0]&0x7f)
			script = script[1:]
			n = min(n, len(script))
			chunk := script[:n]
			script = script[n:]
			if client {
				tr.Client(chunk)
				c = append(c, chunk...)
			} else {
				tr.Server(chunk)
				s = append(s, chunk...)
			}
			if tr.Boundary() && !framedRef(c, s) {
				t.Fatalf("Boundary() is true but the streams are not framed:\nclient % x\nserver % x", c, s)
			}
		}
	})
}
