package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/resource"
)

// TestSecretStoreCommands: `ferry admin secretstores add|list|show|update|delete` (tables and
// --json) against a running node, and every refusal: a bad vault URI or client ID, a taken name, a
// resource naming a store that does not exist, a username and its path both set, a client ID and
// its path both set, paths without a store, bad secret names and paths, and deleting a store that
// resources use (the refusal lists them).
func TestSecretStoreCommands(t *testing.T) {
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), NoResource: true})
	t.Setenv(client.EnvConfigDir, env.Dirs.Config)
	t.Setenv(client.EnvRuntimeDir, env.Dirs.Runtime)
	const clientID = "11111111-2222-3333-4444-555555555555"

	out, err := run(t, "admin", "secretstores", "add", "azurekeyvault", "kv", "--vault-uri", "https://Ferry-Demo-KV.vault.azure.net/")
	id := strings.TrimSpace(out)
	if err != nil || !strings.HasPrefix(id, "se-") {
		t.Fatalf("secretstores add: %v: %q", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"kv2", "--vault-uri", "http://kv.vault.azure.net/"}, "vault-uri"},
		{[]string{"kv2", "--vault-uri", "https://kv.example.com/"}, "the host must end in .vault.azure.net"},
		{[]string{"kv2", "--vault-uri", "https://kv.vault.azure.net/secrets/x"}, "vault-uri"},
		{[]string{"kv2", "--vault-uri", "https://kv.vault.azure.net/", "--managed-identity-client-id", "nope"}, "managed-identity-client-id"},
		{[]string{"kv", "--vault-uri", "https://other.vault.azure.net/"}, "already exists"},
	} {
		out, err := run(t, append([]string{"admin", "secretstores", "add", "azurekeyvault"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("add %v: %v: %s; want %q", tc.args, err, out, tc.want)
		}
	}
	out, err = run(t, "admin", "secretstores", "list")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "https://ferry-demo-kv.vault.azure.net/") || !strings.Contains(out, "system-assigned") {
		t.Fatalf("list: %v: %s", err, out)
	}
	out, err = run(t, "admin", "secretstores", "list", "--json")
	var stores []resource.SecretStore
	if err != nil || json.Unmarshal([]byte(out), &stores) != nil || len(stores) != 1 || stores[0].ID != id || stores[0].Name != "kv" {
		t.Fatalf("list --json: %v: %s", err, out)
	}
	var one resource.SecretStore
	for _, ref := range []string{id, "kv"} {
		out, err = run(t, "admin", "secretstores", "show", ref, "--json")
		if err != nil || json.Unmarshal([]byte(out), &one) != nil || one.ID != id || one.Type != resource.SecretStoreTypeAzureKeyVault {
			t.Fatalf("show %s --json: %v: %s", ref, err, out)
		}
	}
	if out, err = run(t, "admin", "secretstores", "show", "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("show nope: %v: %s", err, out)
	}
	out, err = run(t, "admin", "secretstores", "update", "kv", "--managed-identity-client-id", clientID, "--json")
	if err != nil || !strings.Contains(out, clientID) {
		t.Fatalf("update: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "secretstores", "show", id); err != nil || !strings.Contains(out, clientID) {
		t.Fatalf("show after update: %v: %s", err, out)
	}

	// Resources and their secret fields.
	base := []string{"admin", "datasources", "add", "azurepostgresmi", "kvres", "--hostname=" + env.Emu.Hostname(), "--database=d",
		"--bind-interface=" + demo.RandomLoopbackIP()}
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--secret-store-id=se-0000000000000000", "--username-path=pg-user"}, `no secret store "se-0000000000000000"`},
		{[]string{"--secret-store-id=" + id, "--username=u", "--username-path=pg-user"}, "drop --username (both are set)"},
		{[]string{"--secret-store-id=" + id, "--username=u"}, "drop --username and give --username-path"},
		{[]string{"--secret-store-id=" + id}, "username path is required"},
		{[]string{"--secret-store-id=" + id, "--username-path=pg-user", "--managed-identity-client-id=" + clientID, "--managed-identity-client-id-path=pg-client"}, "both a client ID and its path are set"},
		{[]string{"--username=u", "--username-path=pg-user"}, "a secret path needs a secret store"},
		{[]string{"--username=u", "--managed-identity-client-id-path=pg-client"}, "a secret path needs a secret store"},
		{[]string{"--secret-store-id=" + id, "--username-path=pg_user"}, "1-127 letters, digits and dashes"},
		{[]string{"--secret-store-id=" + id, "--username-path=" + strings.Repeat("a", 128)}, "1-127 letters, digits and dashes"},
		{[]string{"--secret-store-id=" + id, "--username-path=pg-user?field=user"}, "only key=FIELD"},
		{[]string{"--secret-store-id=" + id, "--username-path=pg-user/v1"}, "32 hex digits"},
		{[]string{"--secret-store-id=" + id, "--username-path=pg-user", "--managed-identity-client-id-path=a b"}, "managed-identity-client-id-path"},
	} {
		out, err := run(t, append(append([]string{}, base...), tc.flags...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("add with %v: %v: %s; want %q", tc.flags, err, out, tc.want)
		}
	}
	out, err = run(t, append(append([]string{}, base...), "--secret-store-id="+id, "--username-path=pg-login?key=user", "--managed-identity-client-id-path=pg-login?key=client")...)
	if err != nil {
		t.Fatalf("add with a store: %v: %s", err, out)
	}
	out, err = run(t, "admin", "datasources", "show", "kvres")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "pg-login?key=user") || !strings.Contains(out, "pg-login?key=client") ||
		!strings.Contains(out, "kv: Azure Key Vault https://ferry-demo-kv.vault.azure.net/, read with "+clientID) {
		t.Fatalf("datasources show: %v: %s", err, out)
	}

	// A store in use is not deleted; the refusal names its resources.
	out, err = run(t, "admin", "secretstores", "delete", "kv")
	if err == nil || !strings.Contains(err.Error(), "kvres") || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("delete a store in use: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "datasources", "delete", "kvres"); err != nil {
		t.Fatalf("datasources delete: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "secretstores", "delete", id, "--json"); err != nil {
		t.Fatalf("delete: %v: %s", err, out)
	}
	if out, err = run(t, "admin", "secretstores", "list", "--json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("list after delete: %v: %q", err, out)
	}
}
