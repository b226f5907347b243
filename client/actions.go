package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Connector is the part of Control that ConnectAll needs (Control satisfies it).
type Connector interface {
	Status(ctx context.Context) (Status, error)
	Connect(ctx context.Context, name string) (ResourceStatus, error)
}

// ConnectAll connects every resource of the user that is not connected yet and returns the rows it
// connected. Failures do not stop the others; they come back joined, one per resource.
func ConnectAll(ctx context.Context, c Connector) ([]ResourceStatus, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect all: %w", err)
	}
	if st.Suspended || st.DeviceRemoved {
		return nil, fmt.Errorf("connect all: %s", st.NodeError)
	}
	if !st.NodeReachable {
		return nil, fmt.Errorf("connect all: ferry-node is unreachable (%s); check the network and try again", st.NodeError)
	}
	var done []ResourceStatus
	var errs []error
	for _, r := range st.Resources {
		if r.Connected {
			continue
		}
		rs, err := c.Connect(ctx, r.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, rs)
	}
	return done, errors.Join(errs...)
}

// JDBCURL returns the JDBC URL of the resource's local address, the form DBeaver, DataGrip and pgjdbc
// take: jdbc:postgresql://host:port/database?user=NAME&sslmode=disable (pgjdbc's URL syntax,
// https://jdbc.postgresql.org/documentation/use/). The host is the loopback address or, for a
// resource served by virtual networking, its DNS alias; either way the local hop stays on this
// machine (loopback or the TUN) and is plaintext. demo/vnettest TestPerResourceModes connects
// pgjdbc with it as copied in both modes.
func JDBCURL(r ResourceStatus) string {
	host, port, _ := net.SplitHostPort(r.Address)
	q := url.Values{}
	q.Set("user", r.Username)
	q.Set("sslmode", "disable")
	return "jdbc:postgresql://" + net.JoinHostPort(host, port) + "/" + url.PathEscape(r.Database) + "?" + q.Encode()
}

// PsqlCommand returns a shell command line that opens psql on the resource's local address:
// psql 'host=… port=… dbname=… user=… sslmode=disable'.
func PsqlCommand(r ResourceStatus) string {
	return "psql '" + strings.ReplaceAll(ConnString(r), "'", `'\''`) + "'"
}

// DaemonRunning reports whether a daemon answers on the control socket of d (it only dials, and
// only a socket the user or root owns).
func DaemonRunning(d Dirs) bool {
	if checkSocket(d.Socket()) != nil {
		return false
	}
	c, err := net.DialTimeout("unix", d.Socket(), time.Second)
	if err != nil {
		return false
	}
	if checkPeer(c, d.Socket()) != nil {
		return false
	}
	_ = c.Close()
	return true
}
