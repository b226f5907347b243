package pgproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Request codes of the startup packets (PostgreSQL protocol §55.7).
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
)

// startup is what the client asked for in its startup phase. Exactly one of
// msg and cancel is set.
type startup struct {
	msg          *pgproto3.StartupMessage
	minor        uint32   // the protocol minor version the client asked for (3.minor)
	unrecognized []string // _pq_.* protocol options, which the proxy does not support
	cancel       *pgproto3.CancelRequest
}

// errClientGone marks a client that closed or stalled before sending its
// StartupMessage; it is not answered.
var errClientGone = errors.New("client closed the connection before its StartupMessage")

// readStartup answers SSLRequest and GSSENCRequest with 'N' (each at most
// once, in any order) and returns the StartupMessage or CancelRequest that
// follows. Packets are read exactly (no read-ahead), so anything the client
// pipelines after its StartupMessage stays in conn for the relay.
//
// pgproto3.Backend.ReceiveStartupMessage (whose SetMaxBodyLen limit does not
// apply to startup packets anyway) reads ahead into its own buffer and would
// swallow pipelined bytes; so the framing is done here and the packets are
// decoded with pgproto3's message types, with the same 10,000-byte limit.
func readStartup(conn net.Conn) (*startup, error) {
	var sawSSL, sawGSS bool
	for {
		code, body, err := readStartupPacket(conn)
		if err != nil {
			return nil, err
		}
		switch {
		case code == codeSSLRequest || code == codeGSSENCRequest:
			if (code == codeSSLRequest && sawSSL) || (code == codeGSSENCRequest && sawGSS) {
				return nil, fatal(audit.OutcomeFailed, "08P01", "protocol violation: SSLRequest or GSSENCRequest sent twice", "", "", nil)
			}
			sawSSL = sawSSL || code == codeSSLRequest
			sawGSS = sawGSS || code == codeGSSENCRequest
			// 'N': the tunnel already encrypts the connection; the proxy has
			// no certificate of its own to offer.
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return nil, fmt.Errorf("answer SSLRequest/GSSENCRequest: %w", errClientGone)
			}
		case code == codeCancelRequest:
			var cr pgproto3.CancelRequest
			if err := cr.Decode(body); err != nil {
				return nil, fatal(audit.OutcomeFailed, "08P01", "invalid CancelRequest: "+err.Error(), "", "", err)
			}
			return &startup{cancel: &cr}, nil
		case code>>16 == 3:
			return decodeStartupMessage(code, body)
		default:
			return nil, fatal(audit.OutcomeFailed, "0A000",
				fmt.Sprintf("unsupported frontend protocol %d.%d: the Ferry proxy supports protocol 3.0", code>>16, code&0xffff),
				"", "Use a PostgreSQL client that speaks protocol version 3.", nil)
		}
	}
}

// readStartupPacket reads one length-prefixed startup packet and returns its
// request code and its whole body (code included).
func readStartupPacket(conn net.Conn) (uint32, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("%w: %v", errClientGone, err)
	}
	if hdr[0] == 0x16 {
		// A TLS ClientHello: the client uses sslnegotiation=direct (PostgreSQL 17+).
		return 0, nil, fmt.Errorf("%w: client started TLS directly (sslnegotiation=direct is not supported; use sslmode=prefer or disable, the tunnel encrypts)", errClientGone)
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:]))) - 4
	if n < 4 || n > MaxStartupPacket {
		return 0, nil, fatal(audit.OutcomeFailed, "08P01", fmt.Sprintf("invalid length of startup packet: %d bytes (allowed 4 to %d)", n, MaxStartupPacket), "", "", nil)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return 0, nil, fmt.Errorf("%w: incomplete startup packet: %v", errClientGone, err)
	}
	return binary.BigEndian.Uint32(body), body, nil
}

// decodeStartupMessage decodes a protocol 3.x StartupMessage. A minor version
// above 0, and _pq_.* options, are answered later with NegotiateProtocolVersion
// (protocol §55.2.1), as a 3.0 server does.
func decodeStartupMessage(code uint32, body []byte) (*startup, error) {
	minor := code & 0xffff
	binary.BigEndian.PutUint32(body, pgproto3.ProtocolVersion30)
	var msg pgproto3.StartupMessage
	if err := msg.Decode(body); err != nil {
		return nil, fatal(audit.OutcomeFailed, "08P01", "invalid StartupMessage: "+err.Error(), "", "", err)
	}
	st := &startup{msg: &msg, minor: minor}
	for k := range msg.Parameters {
		if strings.HasPrefix(k, "_pq_.") {
			st.unrecognized = append(st.unrecognized, k)
		}
	}
	return st, nil
}
