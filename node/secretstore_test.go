package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// kvLogin connects to resource name through the client and the node and returns current_user, or
// the login's error.
func kvLogin(ctx context.Context, t *testing.T, env *demo.Env, name string) (string, error) {
	t.Helper()
	rs, err := env.Daemon.Connect(ctx, name)
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(cctx, client.ConnString(rs))
	if err != nil {
		return "", err
	}
	defer pc.Close(context.Background())
	res, err := pc.Exec(cctx, "select current_user").ReadAll()
	if err != nil {
		return "", err
	}
	return string(res[0].Rows[0][0]), nil
}

// pollLogin logs in until cond holds for the outcome, within a bounded deadline.
func pollLogin(ctx context.Context, t *testing.T, env *demo.Env, name, what string, cond func(user string, err error) bool) (string, error) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		u, err := kvLogin(ctx, t, env, name)
		if cond(u, err) {
			return u, err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %q, %v", what, u, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func fatalOf(err error) *pgconn.PgError {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe
	}
	return nil
}

// TestSecretStoreKeyVault drives the whole path with the real azsecrets SDK against the emulator's
// Key Vault: a resource whose username and client ID come from a JSON secret logs in; the vault
// sees the store's identity; a rotated secret is used within the TTL; a short outage is invisible,
// a long one gives FATAL 08001 and an unhealthy "secret store" step; a forbidden identity, a
// missing secret and a missing JSON key each say so; and the secret's values never appear in the
// node's logs, the audit log, the API or the client.
func TestSecretStoreKeyVault(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	logs := &syncBuffer{}
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		NodeConfig: func(c *node.Config) {
			c.HealthInterval = node.Duration(time.Hour)
			c.HealthStepTimeout = node.Duration(10 * time.Second)
			c.SecretTTL = node.Duration(200 * time.Millisecond)
			c.SecretMaxStaleness = node.Duration(15 * time.Second)
			c.MetricsListen = "127.0.0.1:0"
		}})
	emu := env.Emu

	// The role names are the secret values: random, so that a hit in the logs is a leak.
	role1, role2 := "kv-"+uuid.NewString()[:13], "kv-"+uuid.NewString()[:13]
	id1 := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: role1}
	id2 := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: role2}
	reader := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: "ferry-kv-reader"}
	outsider := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: "ferry-kv-outsider"}
	for _, id := range []azureemu.Identity{id1, id2, reader, outsider} {
		emu.AddUserIdentity(id)
	}
	for _, id := range []azureemu.Identity{id1, id2} {
		if err := emu.CreatePrincipal(ctx, id.DisplayName, id.ObjectID); err != nil {
			t.Fatal(err)
		}
	}
	if err := emu.CreateDatabase(ctx, "kv", ""); err != nil {
		t.Fatal(err)
	}
	emu.GrantSecretsUser(demo.VaultName, reader.ObjectID)
	login := func(user, clientID string) string {
		b, _ := json.Marshal(map[string]string{"user": user, "client": clientID})
		return string(b)
	}
	if _, err := emu.SetSecret(demo.VaultName, "pg-login", login(role1, id1.ClientID)); err != nil {
		t.Fatal(err)
	}
	if _, err := emu.SetSecret(demo.VaultName, "pg-user", role1); err != nil {
		t.Fatal(err)
	}
	if _, err := emu.SetSecret(demo.VaultName, "pg-client", id1.ClientID); err != nil {
		t.Fatal(err)
	}

	apiC := env.Daemon.API()
	st, err := apiC.AddSecretStore(ctx, resource.SecretStore{Name: "kv", Type: resource.SecretStoreTypeAzureKeyVault,
		VaultURI: emu.VaultURI(demo.VaultName), ManagedIdentityClientID: reader.ClientID})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.ID, "se-") {
		t.Fatalf("store ID %q", st.ID)
	}
	newRes := func(name, storeID, userPath, clientPath string) {
		t.Helper()
		r := resource.New(name)
		r.Hostname, r.Database = emu.Hostname(), "kv"
		r.SecretStoreID, r.UsernamePath, r.ManagedIdentityClientIDPath = storeID, userPath, clientPath
		r.BindInterface = demo.RandomLoopbackIP()
		if _, err := apiC.AddDatasource(ctx, r); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
	}
	newRes("kv-json", st.ID, "pg-login?key=user", "pg-login?key=client")
	newRes("kv-plain", st.ID, "pg-user", "pg-client")

	// Logins whose username and client ID come from Key Vault: JSON fields and whole values.
	for _, name := range []string{"kv-json", "kv-plain"} {
		if u, err := kvLogin(ctx, t, env, name); err != nil || u != role1 {
			t.Fatalf("%s: logged in as %q, %v; want %s", name, u, err, role1)
		}
	}
	var sawReader bool
	for _, r := range emu.VaultRequests() {
		if r.Status == 200 {
			if r.ClientID != reader.ClientID {
				t.Errorf("the vault served %s to client %s, want the store's identity %s", r.Secret, r.ClientID, reader.ClientID)
			}
			sawReader = true
		}
	}
	if !sawReader {
		t.Fatalf("the vault served nothing: %+v", emu.VaultRequests())
	}

	// Rotation: the new username and client ID are used within the TTL.
	if _, err := emu.SetSecret(demo.VaultName, "pg-login", login(role2, id2.ClientID)); err != nil {
		t.Fatal(err)
	}
	pollLogin(ctx, t, env, "kv-json", "rotation", func(u string, err error) bool { return err == nil && u == role2 })

	// A short outage: the cached value keeps working.
	emu.SetVaultOutage(true)
	if u, err := kvLogin(ctx, t, env, "kv-json"); err != nil || u != role2 {
		t.Fatalf("during a short Key Vault outage: %q, %v", u, err)
	}
	// A long one: past the maximum staleness, a clear FATAL 08001.
	_, err = pollLogin(ctx, t, env, "kv-json", "long outage", func(_ string, err error) bool { return err != nil })
	want := "could not read username from secret store " + st.ID + " (Key Vault " + emu.VaultURI(demo.VaultName) + "): "
	if pe := fatalOf(err); pe == nil || pe.Code != "08001" || !strings.HasPrefix(pe.Message, want) || !strings.Contains(pe.Message, "maximum staleness") {
		t.Fatalf("after a long outage: %v, want FATAL 08001 %q…", err, want)
	}
	h, err := apiC.HealthCheck(ctx, "kv-json")
	if err != nil || h.State != api.HealthUnhealthy || h.FailedStep != api.StepSecretStore || !strings.Contains(h.Hint, "firewall") {
		t.Fatalf("health during the outage: %v %+v", err, h)
	}
	emu.SetVaultOutage(false)
	pollLogin(ctx, t, env, "kv-json", "after the outage", func(u string, err error) bool { return err == nil && u == role2 })
	h, err = apiC.HealthCheck(ctx, "kv-json")
	if err != nil || h.State != api.HealthHealthy || len(h.Steps) != 7 || h.Steps[3].Name != api.StepSecretStore {
		t.Fatalf("health after the outage: %v %+v", err, h)
	}

	// ferry-node doctor reads the store as the node does.
	cfg, err := node.LoadConfig(filepath.Join(env.NodeDir, node.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	var doctorOut bytes.Buffer
	if ok, err := node.Doctor(ctx, &doctorOut, env.NodeDir, cfg, node.DoctorOptions{Resource: "kv-json"}); err != nil || !ok ||
		!strings.Contains(doctorOut.String(), "✓ secret store") || !strings.Contains(doctorOut.String(), "role from secret "+st.ID+"/pg-login?key=user") {
		t.Fatalf("doctor kv-json: ok=%v err=%v\n%s", ok, err, doctorOut.String())
	}

	// Throttling: 429 with Retry-After is retried by the SDK within the read's deadline.
	emu.ThrottleVault(1, time.Second)
	pollLogin(ctx, t, env, "kv-json", "after throttling", func(u string, err error) bool { return err == nil && u == role2 })

	// Each failure says what it is.
	forbidden, err := apiC.AddSecretStore(ctx, resource.SecretStore{Name: "kv-outsider", Type: resource.SecretStoreTypeAzureKeyVault,
		VaultURI: emu.VaultURI(demo.VaultName), ManagedIdentityClientID: outsider.ClientID})
	if err != nil {
		t.Fatal(err)
	}
	newRes("kv-forbidden", forbidden.ID, "pg-user", "")
	newRes("kv-missing", st.ID, "no-such-secret", "")
	newRes("kv-nokey", st.ID, "pg-login?key=nope", "")
	if _, err := emu.SetSecret(demo.VaultName, "pg-disabled", role1); err != nil {
		t.Fatal(err)
	}
	if err := emu.SetSecretEnabled(demo.VaultName, "pg-disabled", "", false); err != nil {
		t.Fatal(err)
	}
	newRes("kv-disabled", st.ID, "pg-disabled", "")
	if _, err := emu.SetSecret(demo.VaultName, "pg-ctl", "evil\x00user"); err != nil {
		t.Fatal(err)
	}
	newRes("kv-ctl", st.ID, "pg-ctl", "")
	for _, tc := range []struct{ name, msg, hint string }{
		{"kv-forbidden", "not authorized", "Key Vault Secrets User"},
		{"kv-missing", "no such secret", "create it or fix the resource's path"},
		{"kv-nokey", `has no field "nope"`, "JSON object"},
		{"kv-disabled", "disabled", "enable it"},
		{"kv-ctl", "is not a role name", "store the PostgreSQL role name"},
	} {
		_, err := kvLogin(ctx, t, env, tc.name)
		pe := fatalOf(err)
		if pe == nil || pe.Code != "08001" || !strings.Contains(pe.Message, "could not read username from secret store") ||
			!strings.Contains(pe.Message, tc.msg) || !strings.Contains(pe.Hint, tc.hint) {
			t.Errorf("%s: %v (hint %q), want FATAL 08001 with %q and hint %q", tc.name, err, hintOf(pe), tc.msg, tc.hint)
		}
		h, err := apiC.HealthCheck(ctx, tc.name)
		if err != nil || h.FailedStep != api.StepSecretStore || !strings.Contains(h.Hint, tc.hint) {
			t.Errorf("%s health: %v %+v", tc.name, err, h)
		}
	}

	// A client ID from the store that names no identity of the VM: IMDS refuses, and the FATAL
	// names the secret, not the ID.
	unassigned := uuid.NewString()
	if _, err := emu.SetSecret(demo.VaultName, "pg-bad-client", unassigned); err != nil {
		t.Fatal(err)
	}
	newRes("kv-unassigned", st.ID, "pg-user", "pg-bad-client")
	_, err = kvLogin(ctx, t, env, "kv-unassigned")
	if pe := fatalOf(err); pe == nil || pe.Code != "28000" || !strings.Contains(pe.Message, "secret "+st.ID+"/pg-bad-client") {
		t.Errorf("kv-unassigned: %v", err)
	}
	if h, err := apiC.HealthCheck(ctx, "kv-unassigned"); err != nil || h.FailedStep != api.StepToken {
		t.Errorf("kv-unassigned health: %v %+v", err, h)
	}

	// The values never leave: not in logs, the audit log, the API, or what the client holds.
	out := []string{doctorOut.String()}
	// The emulator's own log lines name identities and roles; the node's and the client's must not
	// name the usernames, nor the client IDs read from the store (the token source names their
	// secret paths).
	var logLines []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "component=node") || strings.Contains(l, "component=client") {
			logLines = append(logLines, l)
		}
	}
	for _, v := range []string{role1, role2, id1.ClientID, id2.ClientID, unassigned} {
		if l := strings.Join(logLines, "\n"); strings.Contains(l, v) {
			t.Errorf("the logs hold the secret username %q: …%s…", v, l[max(0, strings.Index(l, v)-300):min(len(l), strings.Index(l, v)+100)])
		}
	}
	conns, err := apiC.Connections(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(conns)
	out = append(out, string(b))
	for _, name := range []string{"kv-json", "kv-plain", "kv-forbidden", "kv-unassigned"} {
		r, err := apiC.Datasource(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := apiC.Diagnostics(ctx, name)
		b1, _ := json.Marshal(r)
		b2, _ := json.Marshal(d)
		out = append(out, string(b1), string(b2))
	}
	resp, err := http.Get("http://" + env.Node.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metricsText, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out = append(out, string(metricsText))
	all, _ := apiC.HealthAll(ctx)
	rs, _ := apiC.Resources(ctx)
	ds, _ := apiC.Datasources(ctx)
	stores, _ := apiC.SecretStores(ctx)
	for _, v := range []any{all, rs, ds, stores} {
		b, _ := json.Marshal(v)
		out = append(out, string(b))
	}
	var roleSeen bool
	for _, c := range conns {
		if strings.HasPrefix(c.Role, "secret "+st.ID+"/") {
			roleSeen = true
		}
	}
	if !roleSeen {
		t.Errorf("no connection record names the secret path as its role: %s", b)
	}
	for i, o := range out {
		for _, v := range []string{role1, role2, id1.ClientID, id2.ClientID, unassigned} {
			if strings.Contains(o, v) {
				line := o[max(0, strings.Index(o, v)-300):min(len(o), strings.Index(o, v)+100)]
				t.Errorf("output %d holds the secret value %q: …%s…", i, v, line)
			}
		}
	}
}

func hintOf(pe *pgconn.PgError) string {
	if pe == nil {
		return ""
	}
	return pe.Hint
}
