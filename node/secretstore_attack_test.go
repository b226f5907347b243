package node_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/resource"
)

// TestSecretStoreHostileValues gives the node secret values an attacker with write access to the
// vault would choose, and checks that each login fails with a FATAL that holds no part of the
// value, and that a client ID read from the store is not in the node's logs.
func TestSecretStoreHostileValues(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	logs := &syncBuffer{}
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		NodeConfig: func(c *node.Config) {
			c.HealthInterval = node.Duration(time.Hour)
			c.HealthStepTimeout = node.Duration(10 * time.Second)
		}})
	emu := env.Emu
	role := "kv-" + uuid.NewString()[:13]
	id := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: role}
	reader := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: "ferry-kv-reader"}
	for _, i := range []azureemu.Identity{id, reader} {
		emu.AddUserIdentity(i)
	}
	if err := emu.CreatePrincipal(ctx, role, id.ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := emu.CreateDatabase(ctx, "kv", ""); err != nil {
		t.Fatal(err)
	}
	emu.GrantSecretsUser(demo.VaultName, reader.ObjectID)
	apiC := env.Daemon.API()
	st, err := apiC.AddSecretStore(ctx, resource.SecretStore{Name: "kv", Type: resource.SecretStoreTypeAzureKeyVault,
		VaultURI: emu.VaultURI(demo.VaultName), ManagedIdentityClientID: reader.ClientID})
	if err != nil {
		t.Fatal(err)
	}
	newRes := func(name, userPath, clientPath string) {
		t.Helper()
		r := resource.New(name)
		r.Hostname, r.Database = emu.Hostname(), "kv"
		r.SecretStoreID, r.UsernamePath, r.ManagedIdentityClientIDPath = st.ID, userPath, clientPath
		r.BindInterface = demo.RandomLoopbackIP()
		if _, err := apiC.AddDatasource(ctx, r); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
	}
	set := func(name, value string) {
		t.Helper()
		if _, err := emu.SetSecret(demo.VaultName, name, value); err != nil {
			t.Fatal(err)
		}
	}

	// The client ID read from the store logs in, and is named by its path in the node's logs.
	set("pg-user", role)
	set("pg-client", id.ClientID)
	newRes("kv-good", "pg-user", "pg-client")
	if u, err := kvLogin(ctx, t, env, "kv-good"); err != nil || u != role {
		t.Fatalf("kv-good: %q, %v", u, err)
	}

	// A role name longer than PostgreSQL's 63 bytes: the server truncates it, and its messages
	// name the truncated role.
	long := "kv-" + strings.Repeat(strings.ReplaceAll(uuid.NewString(), "-", ""), 3)
	set("pg-long", long)
	newRes("kv-long", "pg-long", "pg-client")
	// Role names with a C1 control character and a Unicode format character (right-to-left
	// override, which turns log lines around in a terminal). (Invalid UTF-8 cannot arrive: Key
	// Vault's answers are JSON, whose strings are Unicode.)
	set("pg-c1", "kv-\u0085-"+uuid.NewString()[:8])
	newRes("kv-c1", "pg-c1", "pg-client")
	set("pg-rlo", "kv-\u202e-"+uuid.NewString()[:8])
	newRes("kv-rlo", "pg-rlo", "pg-client")
	// The right identity with a username that is not its role: the server names the role it
	// expected, the value the secret should hold.
	set("pg-wrong", "kv-wrong-"+uuid.NewString()[:8])
	newRes("kv-wrong", "pg-wrong", "pg-client")
	// A client ID that would add a parameter to IMDS's query.
	set("pg-inject", id.ClientID+"&resource=https://management.azure.com/")
	newRes("kv-inject", "pg-user", "pg-inject")
	// JSON oddities: duplicate keys (the last wins, as in Go), nested objects, numbers.
	set("pg-dup", `{"user":"`+role+`","user":{"x":1}}`)
	newRes("kv-dup", "pg-dup?key=user", "pg-client")
	set("pg-num", `{"user":12345678901234567890}`)
	newRes("kv-num", "pg-num?key=user", "pg-client")

	for _, tc := range []struct {
		name, code string
		leaks      []string
	}{
		{"kv-long", "08001", []string{long[:63], long[:40]}},
		{"kv-c1", "08001", []string{"\u0085"}},
		{"kv-rlo", "08001", []string{"\u202e"}},
		{"kv-wrong", "28000", []string{role}},
		{"kv-inject", "08001", []string{"management.azure.com", id.ClientID}},
		{"kv-dup", "08001", []string{`"x"`}},
		{"kv-num", "08001", []string{"12345678901234567890"}},
	} {
		_, err := kvLogin(ctx, t, env, tc.name)
		pe := fatalOf(err)
		if pe == nil || pe.Code != tc.code {
			t.Errorf("%s: %v, want FATAL %s", tc.name, err, tc.code)
			continue
		}
		for _, l := range tc.leaks {
			for _, s := range []string{pe.Message, pe.Detail, pe.Hint} {
				if strings.Contains(s, l) {
					t.Errorf("%s: the FATAL holds %q of the secret value: %s", tc.name, l, s)
				}
			}
		}
	}

	// Health and diagnostics, which non-admin users' clients show too, hold no value either.
	for _, name := range []string{"kv-long", "kv-wrong", "kv-inject", "kv-good"} {
		h, err := apiC.HealthCheck(ctx, name)
		if err != nil {
			t.Fatalf("health %s: %v", name, err)
		}
		d, _ := apiC.Diagnostics(ctx, name)
		b, _ := json.Marshal([]any{h, d})
		for _, v := range []string{role, id.ClientID, long[:40]} {
			if strings.Contains(string(b), v) {
				t.Errorf("health or diagnostics of %s hold the secret value %q: %s", name, v, b)
			}
		}
	}

	var nodeLog []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "component=node") || strings.Contains(l, "component=client") {
			nodeLog = append(nodeLog, l)
		}
	}
	for _, v := range []string{id.ClientID, role, long[:40]} {
		for _, l := range nodeLog {
			if strings.Contains(l, v) {
				t.Errorf("a node log line holds the secret value %q: %s", v, l)
			}
		}
	}
}
