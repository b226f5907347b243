package health_test

import (
	"context"
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/node/health"
	"github.com/ferryhq/ferry/node/serverhost"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/ferryhq/ferry/resource"
)

// startEmu starts one Azure emulator for the whole test binary's use (MSAL caches tokens per process).
func startEmu(t *testing.T) *azureemu.Emulator {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	emu, err := azureemu.Start(ctx, azureemu.Config{})
	if err != nil {
		t.Skipf("azure emulator cannot start here (PostgreSQL binaries?): %v", err)
	}
	t.Cleanup(func() { emu.Close() })
	return emu
}

// addIdentity assigns a fresh user-assigned identity to the emulated VM and, when role is not
// empty, maps it to role with a database of the same name.
func addIdentity(t *testing.T, emu *azureemu.Emulator, display, role string) azureemu.Identity {
	t.Helper()
	id := azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: display}
	emu.AddUserIdentity(id)
	if role != "" {
		ctx := context.Background()
		if err := emu.CreatePrincipal(ctx, role, id.ObjectID); err != nil {
			t.Fatal(err)
		}
		if err := emu.CreateDatabase(ctx, role, role); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// hangingServer accepts TCP connections and never answers.
func hangingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

type fixture struct {
	emu       *azureemu.Emulator
	dns       string // a loopback UDP address nothing answers on
	overrides map[string]string
	roots     *x509.CertPool
	tokens    *tokensource.Source
}

func newFixture(t *testing.T) *fixture {
	emu := startEmu(t)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(emu.CACertPEM())
	tokens, err := tokensource.New(tokensource.Config{IMDSEndpoint: emu.IMDSEndpoint(), Timeout: 5 * time.Second, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{
		emu:   emu,
		dns:   closedPort(t),
		roots: roots,
		overrides: map[string]string{
			emu.Hostname():                      emu.Addr(),
			"other.postgres.database.azure.com": emu.Addr(), // the front's certificate does not name it
			"down.postgres.database.azure.com":  closedPort(t),
			"hang.postgres.database.azure.com":  hangingServer(t),
		},
		tokens: tokens,
	}
}

func (f *fixture) checker(stepTimeout time.Duration) *health.Checker {
	// The Azure defaults, and the name the "does not resolve" case checks.
	allowed, err := serverhost.Parse(append(slices.Clone(serverhost.Defaults), "nope.invalid"))
	if err != nil {
		panic(err)
	}
	return health.NewChecker(health.Config{
		Tokens: f.tokens, RootCAs: f.roots, HostOverrides: f.overrides, StepTimeout: stepTimeout, AllowedHosts: allowed,
		// Names without an override go to a DNS server on a closed loopback port: never off the host.
		Resolver: &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", f.dns)
		}},
	})
}

func (f *fixture) res(name, host, role, clientID string) resource.Resource {
	r := resource.New(name)
	r.Hostname, r.Port, r.Database, r.Username, r.ManagedIdentityClientID = host, 5432, "postgres", role, clientID
	return r
}

func singleServerNames(r resource.Resource) resource.Resource {
	r.UseAzureSingleServerUsernames = true
	return r
}

// TestCheck runs every step against the emulator and checks the failing step and the exact hint of
// each way a managed-identity setup goes wrong.
func TestCheck(t *testing.T) {
	f := newFixture(t)
	host := f.emu.Hostname()
	ok := addIdentity(t, f.emu, "ferry-mi-ok", "mi_ok")
	unmapped := addIdentity(t, f.emu, "ferry-mi-unmapped", "")
	uuidRole := addIdentity(t, f.emu, "ferry-mi-named", "ferry-mi-named")
	expired := addIdentity(t, f.emu, "ferry-mi-expired", "mi_expired")
	badSig := addIdentity(t, f.emu, "ferry-mi-badsig", "mi_badsig")
	unknown := uuid.NewString()

	cases := []struct {
		name     string
		res      resource.Resource
		fault    azureemu.TokenFault
		step     string // "" = healthy
		hint     string // exact hint
		errPart  string
		timeout  time.Duration
		database string
	}{
		{name: "healthy", res: f.res("ok", host, "mi_ok", ok.ClientID), database: "mi_ok"},
		{name: "unknown client ID", res: f.res("unknown", host, "mi_ok", unknown), step: api.StepToken, errPart: "Identity not found",
			hint: "the user-assigned identity " + unknown + " is not assigned to this VM: assign it (VM → Identity → User assigned)"},
		{name: "principal not mapped", res: f.res("unmapped", host, "ferry-mi-unmapped", unmapped.ClientID), step: api.StepLogin, errPart: "28000",
			hint: "create the role: `select * from pgaadauth_create_principal('ferry-mi-unmapped', false, false);` in the `postgres` database"},
		{name: "principal not mapped, other username", res: f.res("unmapped2", host, "mi_user", unmapped.ClientID), step: api.StepLogin, errPart: "28000",
			hint: "create the role: `select * from pgaadauth_create_principal('ferry-mi-unmapped', false, false);` in the `postgres` database, then set the resource's username to \"ferry-mi-unmapped\""},
		{name: "role named like the client ID", res: f.res("uuid", host, uuidRole.ClientID, uuidRole.ClientID), step: api.StepLogin, errPart: "28000",
			hint: "the resource's username " + uuidRole.ClientID + " is an ID, but Azure names a managed identity's role after the identity's display name: set the resource's username to \"ferry-mi-named\" (if that role does not exist yet, create the role: `select * from pgaadauth_create_principal('ferry-mi-named', false, false);` in the `postgres` database)"},
		{name: "Single Server username on a Flexible Server", res: f.res("single", host, "mi_ok@mypg", ok.ClientID), step: api.StepLogin, errPart: "28000",
			hint: "the server expects the identity's role mi_ok: set the resource's username to mi_ok: mi_ok@mypg is the Single Server form (username@servername), and a Flexible Server takes the role name alone"},
		{name: "Single Server usernames on a Flexible Server", res: singleServerNames(f.res("single2", host, "mi_ok", ok.ClientID)), step: api.StepLogin, errPart: "28000",
			hint: "the server expects the identity's role mi_ok: set the resource's username to mi_ok and turn off use-azure-single-server-usernames: mi_ok@mypg is the Single Server form (username@servername), and a Flexible Server takes the role name alone"},
		{name: "another role's name", res: f.res("otherrole", host, "mi_other", ok.ClientID), step: api.StepLogin, errPart: "28000",
			hint: "the server expects the identity's role mi_ok: set the resource's username to mi_ok"},
		{name: "expired token", res: f.res("expired", host, "mi_expired", expired.ClientID), fault: azureemu.TokenExpired, step: api.StepLogin, errPart: "expired",
			hint: "the server refused the node's access token: The access token has expired. Acquire a new token and retry. Check the node's clock (the token is valid from its nbf to its exp), that the server's Microsoft Entra tenant is the identity's, and that Microsoft Entra authentication is enabled on the server"},
		{name: "invalid token signature", res: f.res("badsig", host, "mi_badsig", badSig.ClientID), fault: azureemu.TokenBadSignature, step: api.StepLogin, errPart: "signature",
			hint: "the server refused the node's access token: The access token signature is invalid. Acquire a new token from Microsoft Entra ID and retry. Check the node's clock (the token is valid from its nbf to its exp), that the server's Microsoft Entra tenant is the identity's, and that Microsoft Entra authentication is enabled on the server"},
		{name: "TLS name mismatch", res: f.res("tlsname", "other.postgres.database.azure.com", "mi_ok", ok.ClientID), step: api.StepTLS, errPart: "certificate is valid for mypg.postgres.database.azure.com",
			hint: "the server's TLS certificate is not valid for other.postgres.database.azure.com (it names mypg.postgres.database.azure.com, 127.0.0.1): set the resource's hostname to the server's own name (<server>.postgres.database.azure.com); a private endpoint keeps that name, so do not use an IP address or another alias"},
		{name: "server down", res: f.res("down", "down.postgres.database.azure.com", "mi_ok", ok.ClientID), step: api.StepTCP, errPart: "connection refused",
			hint: "nothing accepts connections at down.postgres.database.azure.com:5432 (connection refused): check the resource's port (Azure uses 5432) and that the server is started"},
		{name: "server hanging", res: f.res("hang", "hang.postgres.database.azure.com", "mi_ok", ok.ClientID), step: api.StepTLS, errPart: "deadline exceeded", timeout: 300 * time.Millisecond,
			hint: "hang.postgres.database.azure.com:5432 accepted the TCP connection but did not answer the SSLRequest in time: check that it is the PostgreSQL server and not another service or a proxy that holds connections, and the server's load"},
		{name: "hostname does not resolve", res: f.res("nxdomain", "nope.invalid", "mi_ok", ok.ClientID), step: api.StepResolve, errPart: "nope.invalid",
			hint: "the node cannot resolve nope.invalid: check the hostname's spelling; for a private endpoint, link the private DNS zone privatelink.postgres.database.azure.com to the node's virtual network"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.emu.SetTokenFault(tc.fault)
			defer f.emu.SetTokenFault(azureemu.TokenValid)
			if tc.database != "" {
				tc.res.Database = tc.database
			}
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			var seen []string
			start := time.Now()
			h := f.checker(timeout).Check(context.Background(), tc.res, func(s api.HealthStep) { seen = append(seen, s.Name) })
			took := time.Since(start)
			if len(seen) != len(h.Steps) {
				t.Errorf("step callback saw %v, result has %d steps", seen, len(h.Steps))
			}
			if tc.step == "" {
				if h.State != api.HealthHealthy || h.FailedStep != "" || len(h.Steps) != len(health.Steps) {
					t.Fatalf("want healthy with every step, got %+v", h)
				}
				for _, s := range h.Steps {
					if !s.OK || s.Detail == "" {
						t.Errorf("step %s: %+v", s.Name, s)
					}
				}
				return
			}
			if h.State != api.HealthUnhealthy || !h.Checked || h.FailedStep != tc.step {
				t.Fatalf("want unhealthy at %s, got %s at %q: %s", tc.step, h.State, h.FailedStep, h.Error)
			}
			if !strings.Contains(h.Error, tc.errPart) {
				t.Errorf("error %q lacks %q", h.Error, tc.errPart)
			}
			// One short line for people: no IMDS request/response dump (that stays in the node's log).
			for _, bad := range []string{"\n", "GET http", "RESPONSE ", "To troubleshoot", "{"} {
				if strings.Contains(h.Error, bad) {
					t.Errorf("error is not one short line (has %q): %q", bad, h.Error)
				}
			}
			if h.Hint != tc.hint {
				t.Errorf("hint:\n got %s\nwant %s", h.Hint, tc.hint)
			}
			last := h.Steps[len(h.Steps)-1]
			if last.Name != tc.step || last.OK {
				t.Errorf("last step %+v", last)
			}
			for _, s := range h.Steps[:len(h.Steps)-1] {
				if !s.OK {
					t.Errorf("step %s before the failure failed: %+v", s.Name, s)
				}
			}
			if tc.timeout != 0 && took > 10*time.Second {
				// Loose bound: the step timeout, not the 30 s check timeout, ended the check.
				t.Errorf("check took %s with a %s step timeout", took, tc.timeout)
			}
		})
	}

	t.Run("scheduler", func(t *testing.T) { testScheduler(t, f, ok) })
}

// testScheduler: a resource is unhealthy (not checked yet) until its first check, healthy after it;
// a hanging server does not hold up the others; Check runs on demand; a change is rechecked.
func testScheduler(t *testing.T, f *fixture, ok azureemu.Identity) {
	good := f.res("good", f.emu.Hostname(), "mi_ok", ok.ClientID)
	good.Database = "mi_ok"
	hang := f.res("hang", "hang.postgres.database.azure.com", "mi_ok", ok.ClientID)
	var mu sync.Mutex
	list := []resource.Resource{good, hang}
	var observed []api.Health
	s := health.NewScheduler(health.SchedulerConfig{
		Checker: f.checker(3 * time.Second),
		List: func(context.Context) ([]resource.Resource, error) {
			mu.Lock()
			defer mu.Unlock()
			return append([]resource.Resource(nil), list...), nil
		},
		Interval:    time.Hour,
		Concurrency: 2,
		Observe: func(h api.Health) {
			mu.Lock()
			observed = append(observed, h)
			mu.Unlock()
		},
	})
	if h := s.Last("good"); h.State != api.HealthUnhealthy || h.Checked || h.Label() != "unhealthy (not checked yet)" {
		t.Fatalf("before the first check: %+v (%s)", h, h.Label())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.Start(ctx)
	defer s.Close()
	waitFor(t, func() bool { return s.Last("good").Checked })
	if h := s.Last("good"); h.State != api.HealthHealthy {
		t.Fatalf("after the first check: %+v", h)
	}
	// The hanging server's check is still running (3 s step timeout): it held up nobody.
	if h := s.Last("hang"); h.Checked {
		t.Errorf("hang was already checked: %+v", h)
	}
	waitFor(t, func() bool { return s.Last("hang").Checked })
	if h := s.Last("hang"); h.FailedStep != api.StepTLS {
		t.Errorf("hang: %+v", h)
	}

	// A change of the catalog entry is checked again without waiting for the interval.
	mu.Lock()
	list[0].Database = "no_such_db"
	mu.Unlock()
	s.Kick()
	waitFor(t, func() bool { return s.Last("good").State == api.HealthUnhealthy })
	if h := s.Last("good"); h.FailedStep != api.StepLogin || !strings.Contains(h.Hint, `database "no_such_db" does not exist`) {
		t.Errorf("after the change: %+v", h)
	}
	// On demand.
	mu.Lock()
	list[0].Database = "mi_ok"
	mu.Unlock()
	h, err := s.Check(ctx, "good")
	if err != nil || h.State != api.HealthHealthy || s.Last("good").State != api.HealthHealthy {
		t.Errorf("on-demand check: %v %+v", err, h)
	}
	if _, err := s.Check(ctx, "nope"); err == nil {
		t.Error("check of an unknown resource succeeded")
	}
	mu.Lock()
	n := len(observed)
	mu.Unlock()
	if n < 4 {
		t.Errorf("Observe saw %d results, want at least 4", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
