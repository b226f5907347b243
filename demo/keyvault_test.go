package demo_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
)

// TestKeyVaultDemo: the demo's azure-pg-mi-kv, whose username and client ID the node reads from the
// emulator's Key Vault with the VM's system-assigned identity, answers psql as the identity's role;
// the vault saw the system-assigned identity's requests.
func TestKeyVaultDemo(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql is not installed (apt-get install postgresql-client)")
	}
	env := testenv.Start(t, demo.Options{Dir: t.TempDir(), LoopbackIP: demo.RandomLoopbackIP(), KeyVault: true})
	out, err := psql(t, client.ConnString(env.KVResource), "-c", "SELECT current_user")
	if err != nil || strings.TrimSpace(out) != demo.Role {
		t.Fatalf("psql on %s: %v: %q, want %s", demo.KVResourceName, err, out, demo.Role)
	}
	sys := env.Emu.System()
	var served bool
	for _, r := range env.Emu.VaultRequests() {
		if r.Status == 200 && r.Secret == "pg-login" && r.ObjectID == sys.ObjectID {
			served = true
		}
	}
	if !served {
		t.Fatalf("the vault did not serve pg-login to the system-assigned identity: %+v", env.Emu.VaultRequests())
	}
}
