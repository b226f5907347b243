package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/ferryhq/ferry/api"
)

// Control talks to a running daemon over its control socket. The CLI and the desktop app use it.
type Control struct {
	dirs Dirs
	http *http.Client
}

// NewControl returns a Control for the daemon whose socket is dirs.Socket().
func NewControl(dirs Dirs) *Control {
	return &Control{dirs: dirs, http: &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{DialContext: dirs.dialSocket},
	}}
}

func (d Dirs) dialSocket(ctx context.Context, _, _ string) (net.Conn, error) {
	if err := checkSocket(d.Socket()); errors.Is(err, errNoSocket) {
		return nil, fmt.Errorf("the ferry daemon is not running (no socket at %s): start it with `ferry daemon` or open the Ferry desktop app", d.Socket())
	} else if err != nil {
		return nil, err
	}
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", d.Socket())
	if err != nil && (errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)) {
		return nil, fmt.Errorf("the ferry daemon is not running (no socket at %s): start it with `ferry daemon` or open the Ferry desktop app", d.Socket())
	}
	if err != nil {
		return nil, err
	}
	if err := checkPeer(c, d.Socket()); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Control) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ferry"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) {
			err = ue.Unwrap()
		}
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read daemon answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return errors.New(e.Error)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("decode daemon answer: %w", err)
		}
	}
	return nil
}

// Status returns the user's resources and which are connected.
func (c *Control) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.call(ctx, http.MethodGet, "/local/v1/status", nil, &s)
}

// Connect connects a resource and returns its row (with its local address).
func (c *Control) Connect(ctx context.Context, name string) (ResourceStatus, error) {
	var r ResourceStatus
	return r, c.call(ctx, http.MethodPost, "/local/v1/connect", map[string]string{"Name": name}, &r)
}

// Disconnect disconnects the named resources, or all when names is empty.
func (c *Control) Disconnect(ctx context.Context, names ...string) error {
	return c.call(ctx, http.MethodPost, "/local/v1/disconnect", map[string][]string{"Names": names}, nil)
}

// Logout removes this device from the node and deletes its local state; the daemon then exits.
func (c *Control) Logout(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "/local/v1/logout", nil, nil)
}

// API returns a node API client that goes through the daemon (admin commands).
func (c *Control) API() *api.Client {
	return api.NewClient(c.dirs.dialSocket, 60*time.Second)
}

// PGEnv returns the libpq environment (name, value pairs in a fixed order) that makes psql reach the
// resource through its local address: PGHOST, PGPORT, PGDATABASE, PGUSER, PGSSLMODE. The local hop
// is plaintext on loopback; TLS to the server is the node's job.
func PGEnv(r ResourceStatus) [][2]string {
	host, port, _ := net.SplitHostPort(r.Address)
	return [][2]string{{"PGHOST", host}, {"PGPORT", port}, {"PGDATABASE", r.Database}, {"PGUSER", r.Username}, {"PGSSLMODE", "disable"}}
}

// ConnString returns a libpq key/value connection string for the resource's local address.
func ConnString(r ResourceStatus) string {
	host, port, _ := net.SplitHostPort(r.Address)
	return fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", host, port, quoteConn(r.Database), quoteConn(r.Username))
}

func quoteConn(s string) string {
	if s != "" && !strings.ContainsAny(s, " '\\") {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
