package testenv

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/pgserver"
)

// StartCatalogDB starts the catalog database of a fleet (demo.StartCatalogDB) on an emulator that
// is also the IMDS of the node's VM, with demo.CatalogIdentity attached to that VM: a node
// configured with demo.NodeConfig(emu), catalog_url CatalogURL(emu) and catalog_client_id
// demo.CatalogIdentity.ClientID keeps its catalog there, logging in with that identity's token.
// The emulator is closed by t.Cleanup; t is skipped without PostgreSQL.
func StartCatalogDB(t testing.TB) *azureemu.Emulator {
	t.Helper()
	if _, err := pgserver.FindBinDir(); errors.Is(err, pgserver.ErrNoBinaries) {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	emu, err := demo.StartCatalogDB(ctx, azureemu.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := emu.Close(); err != nil {
			t.Errorf("stop the catalog database: %v", err)
		}
	})
	emu.AddUserIdentity(demo.CatalogIdentity)
	return emu
}

// CatalogURL is the catalog database's URL on emu with no password and no sslmode (a node asks
// for verify-full itself), by the server's name on the Azure port, as an operator writes it.
func CatalogURL(emu *azureemu.Emulator) string {
	return "postgres://" + demo.CatalogIdentity.DisplayName + "@" + net.JoinHostPort(emu.Hostname(), "5432") + "/" + demo.CatalogDatabase
}

// TokenIssued reports whether emu's IMDS issued a token for the user-assigned identity clientID.
func TokenIssued(emu *azureemu.Emulator, clientID string) bool {
	for _, r := range emu.IMDSRequests() {
		if strings.EqualFold(r.ClientID, clientID) && r.Status == 200 {
			return true
		}
	}
	return false
}

// CatalogQuery runs a one-column query on the catalog database on emu as the superuser.
func CatalogQuery(t testing.TB, ctx context.Context, emu *azureemu.Emulator, q string) []string {
	t.Helper()
	conn, err := pgx.Connect(ctx, strings.Replace(emu.SuperuserConnString(), "dbname=postgres", "dbname="+demo.CatalogDatabase, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
