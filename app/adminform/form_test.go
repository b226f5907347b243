//go:build cgo || !darwin

package adminform

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"fyne.io/fyne/v2/test"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/cli"
	"github.com/ferryhq/ferry/resource"
)

// cliAdd runs `ferry admin datasources add azurepostgresmi` with args and returns its error text.
func cliAdd(t *testing.T, name string, args ...string) string {
	t.Helper()
	root := cli.NewRoot(nil)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"admin", "datasources", "add", "azurepostgresmi", name}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	if err == nil {
		t.Fatalf("the CLI accepted %s %v: %s", name, args, out.String())
	}
	return err.Error()
}

// TestFormMatchesCLI types the same input into the form and the CLI and expects the same message.
func TestFormMatchesCLI(t *testing.T) {
	test.NewTempApp(t)
	base := []string{"--hostname=mypg.postgres.database.azure.com", "--database=production", "--username=mi_user"}
	tests := []struct {
		name         string
		display      string
		portOverride string
		tags         string
		field        string // the field that must show an error
		want         string // a part of the message
	}{
		{"quote in name", `prod"db`, "", "", "name", `display name must not contain ", < or >`},
		{"less-than in name", "prod<db", "", "", "name", `display name must not contain ", < or >`},
		{"greater-than in name", "prod>db", "", "", "name", `display name must not contain ", < or >`},
		{"port override below range", "ok", "1023", "", "port-override", "port override 1023 is out of range 1024-64999 for loopback mode"},
		{"port override above range", "ok", "65000", "", "port-override", "port override 65000 is out of range 1024-64999 for loopback mode"},
		{"port override not a number", "ok", "ten", "", "port-override", `parse port override "ten": not a number`},
		{"bad tags", "ok", "", "env", "tags", `"env" is not key=value`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := New(func(context.Context, resource.Resource) (resource.Resource, error) {
				t.Fatal("an invalid resource reached the node")
				return resource.Resource{}, nil
			})
			w := test.NewTempWindow(t, f.Object())
			_ = w
			test.Type(f.Name, tc.display)
			test.Type(f.Hostname, "mypg.postgres.database.azure.com")
			test.Type(f.Database, "production")
			test.Type(f.Username, "mi_user")
			test.Type(f.PortOverride, tc.portOverride)
			test.Type(f.Tags, tc.tags)
			test.Tap(f.Submit)

			args := append([]string{}, base...)
			if tc.portOverride != "" {
				args = append(args, "--port-override="+tc.portOverride)
			}
			if tc.tags != "" {
				args = append(args, "--tags="+tc.tags)
			}
			want := cliAdd(t, tc.display, args...)
			if f.Message.Text != want {
				t.Errorf("form says\n%q\nCLI says\n%q", f.Message.Text, want)
			}
			if !strings.Contains(want, tc.want) {
				t.Errorf("CLI message %q lacks %q", want, tc.want)
			}
			if got := f.FieldError(tc.field); !strings.Contains(got, tc.want) {
				t.Errorf("under %s the form shows %q, want %q", tc.field, got, tc.want)
			}
		})
	}
}

// TestFormAddsValidResource checks the edges of the loopback port range pass and every field reaches
// the resource.
func TestFormAddsValidResource(t *testing.T) {
	test.NewTempApp(t)
	for _, po := range []int{resource.LoopbackPortMin, resource.LoopbackPortMax, resource.PortOverrideAuto} {
		got := make(chan resource.Resource, 1)
		f := New(func(_ context.Context, r resource.Resource) (resource.Resource, error) {
			got <- r
			r.ID = "ds-1"
			return r, nil
		})
		test.NewTempWindow(t, f.Object())
		test.Type(f.Name, "azure-pg-mi-dev")
		test.Type(f.Hostname, "mypg.postgres.database.azure.com")
		test.Type(f.Database, "production")
		test.Type(f.Username, "mi_user")
		test.Type(f.ClientID, "11111111-2222-3333-4444-555555555555")
		test.Type(f.PortOverride, strconv.Itoa(po))
		test.Type(f.Tags, "env=dev, team=data")
		f.ConnectivityMode.SetSelected(resource.ModeLoopback)
		test.Tap(f.RestrictDatabase)
		test.Tap(f.Submit)
		var r resource.Resource
		select {
		case r = <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("port override %d: nothing was added; the form says %q", po, f.Message.Text)
		}
		if r.PortOverride != po || r.Tags["team"] != "data" || !r.RestrictDatabase || !r.TLSRequired || r.Port != 5432 ||
			r.ConnectivityMode != resource.ModeLoopback || r.ManagedIdentityClientID == "" {
			t.Errorf("port override %d: resource %+v", po, r)
		}
	}
}

// TestFormSecretStore: the drop-down offers "none" and the node's stores; the path fields show only
// with a store (the username only without one), and a resource with a store carries its ID and
// paths and no username.
func TestFormSecretStore(t *testing.T) {
	test.NewTempApp(t)
	got := make(chan resource.Resource, 1)
	f := New(func(_ context.Context, r resource.Resource) (resource.Resource, error) {
		got <- r
		return r, nil
	})
	test.NewTempWindow(t, f.Object())
	if f.FieldShown("username-path") || f.FieldShown("managed-identity-client-id-path") || !f.FieldShown("username") {
		t.Fatal("without a store: the path fields are shown or the username is not")
	}
	f.SetStores([]resource.SecretStore{{ID: "se-0123456789abcdef", Name: "kv", Type: resource.SecretStoreTypeAzureKeyVault, VaultURI: "https://kv.vault.azure.net/"}})
	if opts := f.SecretStore.Options; len(opts) != 2 || opts[0] != resource.SecretStoreNone || opts[1] != "kv (se-0123456789abcdef)" {
		t.Fatalf("drop-down options %q", opts)
	}
	test.Type(f.Username, "typed-before")
	f.SecretStore.SetSelected("kv (se-0123456789abcdef)")
	if !f.FieldShown("username-path") || !f.FieldShown("managed-identity-client-id-path") || f.FieldShown("username") {
		t.Fatal("with a store: the path fields are hidden or the username is shown")
	}
	test.Type(f.Name, "kvres")
	test.Type(f.Hostname, "mypg.postgres.database.azure.com")
	test.Type(f.Database, "production")
	test.Type(f.UsernamePath, "pg-login?key=user")
	test.Type(f.ClientIDPath, "pg-login?key=client")
	test.Tap(f.Submit)
	select {
	case r := <-got:
		if r.SecretStoreID != "se-0123456789abcdef" || r.UsernamePath != "pg-login?key=user" || r.ManagedIdentityClientIDPath != "pg-login?key=client" || r.Username != "" {
			t.Errorf("resource %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("nothing was added; the form says %q", f.Message.Text)
	}
	f.SecretStore.SetSelected(resource.SecretStoreNone)
	if f.FieldShown("username-path") || !f.FieldShown("username") {
		t.Fatal("back to none: the fields did not follow")
	}
}

// TestFormProxyClusters: the proxy cluster field offers the clusters given to SetClusters as
// "ID (name)"; one chosen is stored as its ID, and a typed ID is taken as typed.
func TestFormProxyClusters(t *testing.T) {
	test.NewTempApp(t)
	got := make(chan resource.Resource, 1)
	f := New(func(_ context.Context, r resource.Resource) (resource.Resource, error) {
		got <- r
		return r, nil
	})
	test.NewTempWindow(t, f.Object())
	f.SetClusters([]api.Cluster{{ID: "n-1a2b345c67890123", Name: "prod"}, {ID: "n-00000000000000aa", Name: "dev"}})
	if opts := f.ClusterOptions(); len(opts) != 2 || opts[0] != "n-1a2b345c67890123 (prod)" || opts[1] != "n-00000000000000aa (dev)" {
		t.Fatalf("proxy cluster options %q", opts)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"chosen", "n-1a2b345c67890123 (prod)", "n-1a2b345c67890123"},
		{"typed", "n-00000000000000bb", "n-00000000000000bb"},
		{"none", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.Name.SetText("r-" + tc.name)
			f.Hostname.SetText("mypg.postgres.database.azure.com")
			f.Database.SetText("production")
			f.Username.SetText("mi_user")
			f.ProxyClusterID.SetText(tc.text)
			test.Tap(f.Submit)
			select {
			case r := <-got:
				if r.ProxyClusterID != tc.want {
					t.Errorf("proxy_cluster_id %q, want %q", r.ProxyClusterID, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("nothing was added; the form says %q", f.Message.Text)
			}
		})
	}
}
