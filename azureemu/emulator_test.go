package azureemu

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
)

// startTestEmulator starts an emulator for t and closes it at cleanup.
func startTestEmulator(t *testing.T, cfg Config) *Emulator {
	t.Helper()
	if cfg.Logger == nil && testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start emulator: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close emulator: %v", err)
		}
	})
	return e
}

func newIdentity(name string) Identity {
	return Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: name}
}

func TestEmulatorLifecycle(t *testing.T) {
	t.Parallel()
	e := startTestEmulator(t, Config{})
	t.Run("superuser, principals and databases", func(t *testing.T) { testSuperuser(t, e) })
	// A session open at Close is ended, not leaked.
	ctx := context.Background()
	sys := e.System()
	if err := e.CreatePrincipal(ctx, "open-session", sys.ObjectID); err != nil {
		t.Fatal(err)
	}
	tok, err := e.IssueToken(sys, Resource, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c, err := connectFront(t, e, "open-session", "postgres", tok, "")
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer c.Close(ctx)
	dir := e.tempDir
	if err := e.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir %s still exists after Close (stat err %v)", dir, err)
	}
	if _, err := os.Stat(e.pg.SocketPath()); !os.IsNotExist(err) {
		t.Fatalf("socket still exists after Close")
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Exec(qctx, "SELECT 1").ReadAll(); err == nil {
		t.Fatal("session open at Close still answers queries")
	}
}

func testSuperuser(t *testing.T, e *Emulator) {
	ctx := context.Background()
	c, err := pgconn.Connect(ctx, e.SuperuserConnString())
	if err != nil {
		t.Fatalf("connect with SuperuserConnString: %v", err)
	}
	defer c.Close(ctx)
	res, err := c.Exec(ctx, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "true" {
		t.Fatalf("SuperuserConnString is not a superuser: %v", err)
	}
	if err := e.CreatePrincipal(ctx, "owner role", uuid.NewString()); err != nil {
		t.Fatal(err)
	}
	if err := e.CreateDatabase(ctx, "app db", "owner role"); err != nil {
		t.Fatal(err)
	}
	if err := e.CreateDatabase(ctx, "app db", "owner role"); err == nil {
		t.Fatal("creating the same database twice succeeded")
	}
	if err := e.CreatePrincipal(ctx, "x", "not-a-uuid"); err == nil {
		t.Fatal("CreatePrincipal accepted an object ID that is not a UUID")
	}
	if err := e.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("Exec of a failing statement returned no error")
	}
}

// TestEmulatorListenIP: every listener takes Config.ListenIP (here another loopback address), and
// an address that is no IP is refused before anything starts.
func TestEmulatorListenIP(t *testing.T) {
	t.Parallel()
	e := startTestEmulator(t, Config{ListenIP: "127.0.0.3"})
	for what, addr := range map[string]string{"front": e.Addr(), "vault": e.VaultAddr(), "imds": strings.TrimPrefix(e.IMDSEndpoint(), "http://")} {
		if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.3" {
			t.Errorf("%s listens on %s, want 127.0.0.3", what, addr)
		}
	}
	if _, err := Start(context.Background(), Config{ListenIP: "node-a"}); err == nil || !strings.Contains(err.Error(), "not an IP address") {
		t.Errorf("ListenIP node-a: %v", err)
	}
}
