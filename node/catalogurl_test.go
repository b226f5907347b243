package node_test

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/pgtest"
	"github.com/ferryhq/ferry/node"
)

// TestCatalogURLPasswordStaysOutOfErrors: a catalog URL may carry a password (a plain PostgreSQL
// login); init and join name the catalog in their errors, and those reach terminals and logs, so
// the password is masked there.
func TestCatalogURLPasswordStaysOutOfErrors(t *testing.T) {
	const secret = "s3cret-catalog-pw"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base := node.Config{PublicHost: "127.0.0.1", EnrollListen: "127.0.0.1:0", IMDSEndpoint: "http://127.0.0.1:9", DNSServer: "127.0.0.1:9"}

	withPassword := func(raw string) string {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(u.User.Username(), secret)
		return u.String()
	}
	check := func(t *testing.T, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%v, want %q", err, want)
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("the error shows the catalog password: %v", err)
		}
	}

	t.Run("unknown scheme", func(t *testing.T) {
		c := base
		c.CatalogURL = "postgress://ferry:" + secret + "@db.example.com/ferry"
		check(t, node.Join(ctx, filepath.Join(t.TempDir(), "n"), c), "use sqlite:")
	})
	srv := pgtest.NewServer(t)
	t.Run("key=value", func(t *testing.T) {
		db, err := srv.NewDatabase(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := base
		c.CatalogURL = "host=" + srv.SocketDir() + " port=" + portOf(t, srv.URL(db)) + " user=" + pgtest.Superuser +
			" dbname=" + db + " sslmode=disable password='" + secret + "'"
		check(t, node.Join(ctx, filepath.Join(t.TempDir(), "n"), c), "holds no deployment yet")
	})
	t.Run("postgres", func(t *testing.T) {
		db, err := srv.NewDatabase(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := base
		c.CatalogURL = withPassword(srv.URL(db))
		check(t, node.Join(ctx, filepath.Join(t.TempDir(), "a"), c), "holds no deployment yet")
		if _, err := node.Init(ctx, filepath.Join(t.TempDir(), "b"), c, node.DefaultAdmin); err != nil {
			t.Fatal(err)
		}
		_, err = node.Init(ctx, filepath.Join(t.TempDir(), "c"), c, node.DefaultAdmin)
		check(t, err, "already holds a deployment")
	})
}

func portOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get("port")
}

// TestCatalogURLKeyValueIsPostgresOrRefused: a key=value catalog_url the database layer would not
// take for PostgreSQL (keys it does not recognise, such as HOST= in capitals) is refused, rather
// than opened as a new SQLite file of that name in the working directory, which would leave the
// node on a catalog of its own while it believes it shares the fleet's.
func TestCatalogURLKeyValueIsPostgresOrRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Chdir(t.TempDir())
	for _, u := range []string{"HOST=db.example.com DBNAME=ferry", "application_name=ferry"} {
		c := node.Config{PublicHost: "127.0.0.1", EnrollListen: "127.0.0.1:0", IMDSEndpoint: "http://127.0.0.1:9", DNSServer: "127.0.0.1:9", CatalogURL: u}
		_, err := node.Init(ctx, filepath.Join(t.TempDir(), "n"), c, node.DefaultAdmin)
		if err == nil || !strings.Contains(err.Error(), "catalog_url") {
			t.Errorf("init with catalog_url %q: %v; want it refused", u, err)
		}
		if entries, _ := os.ReadDir("."); len(entries) != 0 {
			t.Fatalf("init with catalog_url %q made %d files in the working directory", u, len(entries))
		}
	}
}
