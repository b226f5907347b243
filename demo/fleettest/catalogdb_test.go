//go:build linux

package fleettest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/netlab"
)

// TestCatalogDBSharedByNodeHosts: the catalog database's server runs on the catalog host; from
// each of two node hosts, a login with the fleet identity's token from the IMDS the nodes are
// configured with, by the server's name (the lab's /etc/hosts) over TLS verified against the
// server's CA, reaches the same database: what one host writes the other reads.
func TestCatalogDBSharedByNodeHosts(t *testing.T) {
	needLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, hosts := lab(t, ctx, "catalog", "node-a", "node-b")
	cat := startCatalog(t, ctx, l, hosts["catalog"])
	if err := cat.StartDB(ctx); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cat.CatalogURL())
	if err != nil || u.User.Username() != demo.CatalogIdentity.DisplayName || u.Hostname() != cat.DB.Hostname() {
		t.Fatalf("catalog URL %s: %v", cat.CatalogURL(), err)
	}
	if _, ok := u.User.Password(); ok {
		t.Fatalf("catalog URL %s holds a password", cat.CatalogURL())
	}
	for i, name := range []string{"node-a", "node-b"} {
		h := hosts[name]
		cfg := cat.NodeConfig(h)
		tok, err := hostIMDSToken(ctx, h, cfg.IMDSEndpoint, demo.CatalogIdentity.ClientID)
		if err != nil {
			t.Fatalf("%s: token from %s: %v", name, cfg.IMDSEndpoint, err)
		}
		conn := fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=verify-full sslrootcert=%s",
			u.Hostname(), u.Port(), demo.CatalogDatabase, u.User.Username(), cat.DB.CACertFile())
		sql := fmt.Sprintf("SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS seen (host text); INSERT INTO seen VALUES ('%s'); SELECT count(*) FROM seen", name)
		cmd := h.Command(ctx, "psql", conn, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+tok, "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(i+1) {
			t.Fatalf("%s: psql to the catalog database: %s, %v", name, out, err)
		}
	}
}

// hostIMDSToken asks the IMDS at endpoint, from inside h, for a token of the user-assigned identity
// clientID for Azure Database for PostgreSQL.
func hostIMDSToken(ctx context.Context, h *netlab.Host, endpoint, clientID string) (string, error) {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return h.DialContext(ctx, network, addr)
		},
	}}
	defer hc.CloseIdleConnections()
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {azureemu.Resource}, "client_id": {clientID}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+azureemu.IMDSTokenPath+"?"+q.Encode(), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Metadata", "true")
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("IMDS answered %s: %v", resp.Status, err)
	}
	return body.AccessToken, nil
}
