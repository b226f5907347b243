package tokensource

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
)

// clearManagedIdentityEnv empties the variables MSAL reads to choose a managed
// identity source other than IMDS, so the host's environment cannot steer
// the tests.
func clearManagedIdentityEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"} {
		t.Setenv(k, "")
	}
}

func startEmulator(t *testing.T, cfg azureemu.Config) *azureemu.Emulator {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := azureemu.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start Azure emulator: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func newSource(t *testing.T, cfg Config) *Source {
	t.Helper()
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func identity(name string) azureemu.Identity {
	return azureemu.Identity{ClientID: uuid.NewString(), ObjectID: uuid.NewString(), DisplayName: name}
}

// claimsOf decodes a token's claims without verifying it (the emulator's
// front verifies it in its own test case).
func claimsOf(t *testing.T, tok string) jwt.MapClaims {
	t.Helper()
	c := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, c); err != nil {
		t.Fatalf("token is not a JWT: %v", err)
	}
	return c
}

// TestToken runs against one emulator: MSAL caches tokens process-wide per
// identity, so the system-assigned identity must come from a single IMDS
// within this test binary.
func TestToken(t *testing.T) {
	clearManagedIdentityEnv(t)
	user := identity("ferry-uami")
	e := startEmulator(t, azureemu.Config{Users: []azureemu.Identity{user}})
	ctx := context.Background()
	if err := e.CreatePrincipal(ctx, "ferry-vm", e.System().ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := e.CreatePrincipal(ctx, "ferry-uami", user.ObjectID); err != nil {
		t.Fatal(err)
	}
	s := newSource(t, Config{IMDSEndpoint: e.IMDSEndpoint()})

	tests := []struct {
		name     string
		clientID string
		want     azureemu.Identity
		role     string
	}{
		{"system-assigned", "", e.System(), "ferry-vm"},
		{"user-assigned", user.ClientID, user, "ferry-uami"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, exp, err := s.Token(ctx, tc.clientID)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if d := time.Until(exp); d < 50*time.Minute || d > 61*time.Minute {
				t.Errorf("expires in %v, want about 1h", d)
			}
			c := claimsOf(t, tok)
			if c["oid"] != tc.want.ObjectID || c["appid"] != tc.want.ClientID || c["aud"] != azureemu.Resource {
				t.Errorf("claims oid %v appid %v aud %v, want identity %+v", c["oid"], c["appid"], c["aud"], tc.want)
			}
			seen := false
			for _, r := range e.IMDSRequests() {
				if r.ClientID == tc.clientID && r.Status == http.StatusOK && r.Resource == azureemu.Resource {
					seen = true
				}
			}
			if !seen {
				t.Errorf("emulator saw no successful IMDS request with client_id %q for %s: %+v", tc.clientID, azureemu.Resource, e.IMDSRequests())
			}

			// The token logs in to the emulator's PostgreSQL front.
			cfg, err := pgconn.ParseConfig("host=" + e.Hostname() + " sslmode=verify-full sslrootcert=" + e.CACertFile() + " dbname=postgres connect_timeout=10")
			if err != nil {
				t.Fatal(err)
			}
			cfg.User, cfg.Password = tc.role, tok
			cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
			cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", e.Addr())
			}
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			conn, err := pgconn.ConnectConfig(cctx, cfg)
			if err != nil {
				t.Fatalf("log in with the token: %v", err)
			}
			defer conn.Close(ctx)
			res, err := conn.Exec(cctx, "SELECT current_user").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if got := string(res[0].Rows[0][0]); got != tc.role {
				t.Fatalf("current_user %q, want %q", got, tc.role)
			}
		})
	}

	t.Run("unknown client ID", func(t *testing.T) {
		unknown := uuid.NewString()
		_, _, err := s.Token(ctx, unknown)
		if err == nil {
			t.Fatal("Token for an identity the VM does not have succeeded")
		}
		if !strings.Contains(err.Error(), `get managed identity token (client ID "`+unknown+`")`) {
			t.Fatalf("error %q does not name the identity", err)
		}
	})

	t.Run("IMDS outage", func(t *testing.T) {
		// A fresh identity: the MSAL cache holds nothing for it.
		late := identity("late")
		e.AddUserIdentity(late)
		e.SetIMDSOutage(true)
		defer e.SetIMDSOutage(false)
		s := newSource(t, Config{IMDSEndpoint: e.IMDSEndpoint(), Timeout: 20 * time.Second, MaxRetries: 2})
		_, _, err := s.Token(ctx, late.ClientID)
		if err == nil {
			t.Fatal("Token during an IMDS outage succeeded")
		}
		if !strings.Contains(err.Error(), late.ClientID) || !strings.Contains(err.Error(), "503") {
			t.Fatalf("error %q does not name the identity and the 503", err)
		}
		n := 0
		for _, r := range e.IMDSRequests() {
			if r.ClientID == late.ClientID {
				n++
			}
		}
		if n != 3 {
			t.Fatalf("emulator saw %d requests for the identity, want 3 (1 + MaxRetries 2)", n)
		}
		// After the outage the same Source recovers.
		e.SetIMDSOutage(false)
		if _, _, err := s.Token(ctx, late.ClientID); err != nil {
			t.Fatalf("Token after the outage: %v", err)
		}
	})
}

// TestTokenTimeout: an IMDS that accepts connections and never answers must
// not hang Token; it returns a deadline error once Timeout has passed.
func TestTokenTimeout(t *testing.T) {
	clearManagedIdentityEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 64)
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				return
			}
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c: // hold it open, say nothing
			default:
				c.Close()
			}
		}
	}()
	s := newSource(t, Config{IMDSEndpoint: "http://" + ln.Addr().String(), Timeout: 500 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, _, err := s.Token(context.Background(), uuid.NewString())
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Token from a silent IMDS succeeded")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want it to wrap context.DeadlineExceeded", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Token hung on a silent IMDS")
	}
}

func TestNew(t *testing.T) {
	clearManagedIdentityEnv(t)
	tests := []struct {
		name    string
		env     map[string]string
		cfg     Config
		wantErr string
	}{
		{"real IMDS", nil, Config{}, ""},
		{"loopback override", nil, Config{IMDSEndpoint: "http://127.0.0.1:8080"}, ""},
		{"override with a path", nil, Config{IMDSEndpoint: "http://127.0.0.1:8080/metadata"}, "scheme and host"},
		{"override without scheme", nil, Config{IMDSEndpoint: "127.0.0.1:8080"}, "scheme and host"},
		{"override with another scheme", nil, Config{IMDSEndpoint: "ftp://127.0.0.1"}, "scheme and host"},
		{"App Service environment with an override", map[string]string{"IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi", "IDENTITY_HEADER": "x"},
			Config{IMDSEndpoint: "http://127.0.0.1:8080"}, "cannot apply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := New(tc.cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("New error %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestTransportRedirectsOnlyIMDS checks the override transport: requests for
// 169.254.169.254 go to the target, any other host is refused before dialing.
func TestTransportRedirectsOnlyIMDS(t *testing.T) {
	got := make(chan string, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.URL.String()
	}), ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s := newSource(t, Config{IMDSEndpoint: "http://" + ln.Addr().String()})
	tr := s.opts.Transport

	tests := []struct {
		url      string
		wantPath string // "" = refused
	}{
		{"http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01", "/metadata/identity/oauth2/token?api-version=2018-02-01"},
		{"http://169.254.169.254:80/metadata/instance", "/metadata/instance"},
		{"http://login.microsoftonline.com/x", ""},
		{"http://127.0.0.2:1/x", ""},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", tc.url, nil)
			resp, err := tr.Do(req)
			if tc.wantPath == "" {
				if err == nil {
					resp.Body.Close()
					t.Fatal("request to another host was sent")
				}
				if !strings.Contains(err.Error(), "refusing") {
					t.Fatalf("error %v, want a refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if p := <-got; p != tc.wantPath {
				t.Fatalf("target got %q, want %q", p, tc.wantPath)
			}
		})
	}
}

// countFor is how many IMDS requests the emulator answered for clientID with status (0 = any).
func countFor(e *azureemu.Emulator, clientID string, status int) int {
	n := 0
	for _, r := range e.IMDSRequests() {
		if r.ClientID == clientID && (status == 0 || r.Status == status) {
			n++
		}
	}
	return n
}

// TestTokenLifecycle checks the cache in front of azidentity against an emulator issuing 20 s tokens
// (scaled down from Azure's hour; the margins scale with the lifetime: refresh 10 s before expiry,
// usable until 1 s before). Time is moved with the Source's clock hook, so the test takes seconds.
func TestTokenLifecycle(t *testing.T) {
	clearManagedIdentityEnv(t)
	const life = 20 * time.Second
	e := startEmulator(t, azureemu.Config{TokenLifetime: life})
	ctx := context.Background()
	// fresh gives a new identity assigned to the VM and a Source whose clock runs skew ahead.
	fresh := func(t *testing.T, name string, timeout time.Duration) (string, *Source, *time.Duration) {
		id := identity(name)
		e.AddUserIdentity(id)
		s := newSource(t, Config{IMDSEndpoint: e.IMDSEndpoint(), Timeout: timeout})
		skew := new(time.Duration)
		var mu sync.Mutex
		s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Add(*skew) }
		return id.ClientID, s, skew
	}

	t.Run("50 concurrent callers share one IMDS request", func(t *testing.T) {
		id, s, _ := fresh(t, "single-flight", 10*time.Second)
		var wg sync.WaitGroup
		toks := make([]string, 50)
		errs := make([]error, 50)
		for i := range 50 {
			wg.Go(func() { toks[i], _, errs[i] = s.Token(ctx, id) })
		}
		wg.Wait()
		for i := range 50 {
			if errs[i] != nil || toks[i] != toks[0] {
				t.Fatalf("caller %d: err %v, same token %v", i, errs[i], toks[i] == toks[0])
			}
		}
		if n := countFor(e, id, 0); n != 1 {
			t.Fatalf("%d IMDS requests for 50 concurrent callers, want 1", n)
		}
	})

	t.Run("refresh ahead of expiry in the background", func(t *testing.T) {
		id, s, skew := fresh(t, "refresh-ahead", 10*time.Second)
		t1, exp1, err := s.Token(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		// The emulator's expiry is whole seconds: place the clock relative to it.
		*skew = time.Until(exp1) - 12*time.Second // before the refresh point: cached
		if tok, _, _ := s.Token(ctx, id); tok != t1 || countFor(e, id, 0) != 1 {
			t.Fatalf("12 s before expiry: new token %v, %d requests; want the cached token", tok != t1, countFor(e, id, 0))
		}
		*skew = time.Until(exp1) - 8*time.Second // within half the lifetime: cached token returned, refresh started
		if tok, _, _ := s.Token(ctx, id); tok != t1 {
			t.Fatal("in the refresh window the caller did not get the still-valid cached token")
		}
		waitFor(t, func() bool { return countFor(e, id, http.StatusOK) == 2 })
		t2, exp2, err := s.Token(ctx, id)
		if err != nil || t2 == t1 || exp2.Before(exp1) {
			t.Fatalf("after the refresh: err %v, new token %v, expiry %v -> %v", err, t2 != t1, exp1, exp2)
		}
	})

	t.Run("IMDS 500 during a refresh: the cached token keeps serving", func(t *testing.T) {
		id, s, skew := fresh(t, "outage-refresh", 10*time.Second)
		t1, exp1, err := s.Token(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		e.SetIMDSFault(azureemu.IMDSFault{Status: http.StatusInternalServerError})
		defer e.SetIMDSFault(azureemu.IMDSFault{})
		*skew = time.Until(exp1) - 8*time.Second
		for range 20 {
			start := time.Now()
			tok, _, err := s.Token(ctx, id)
			if err != nil || tok != t1 {
				t.Fatalf("during the outage: err %v, cached token %v", err, tok == t1)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("a caller with a usable cached token waited %v for IMDS", d)
			}
		}
		waitFor(t, func() bool { return countFor(e, id, http.StatusInternalServerError) >= 1 })
		// 20 callers, one failed refresh (1 + 2 retries inside azidentity), then backoff: no storm.
		if n := countFor(e, id, http.StatusInternalServerError); n > 3 {
			t.Fatalf("%d IMDS requests during the outage for 20 callers, want at most 3 (one refresh with its retries)", n)
		}
		// Past the usable time with IMDS still failing: a clear error, not the stale token.
		*skew = time.Until(exp1)
		if _, _, err := s.Token(ctx, id); err == nil {
			t.Fatal("an expired token was handed out")
		}
		// IMDS back: a new token (after the backoff, which fits the deadline).
		e.SetIMDSFault(azureemu.IMDSFault{})
		tok, _, err := s.Token(ctx, id)
		if err != nil || tok == t1 {
			t.Fatalf("after the outage: err %v, new token %v", err, tok != t1)
		}
	})

	t.Run("IMDS 429 Retry-After is honoured within the deadline", func(t *testing.T) {
		id, s, _ := fresh(t, "throttled", 10*time.Second)
		e.SetIMDSFault(azureemu.IMDSFault{Status: http.StatusTooManyRequests, RetryAfter: 3 * time.Second})
		time.AfterFunc(time.Second, func() { e.SetIMDSFault(azureemu.IMDSFault{}) })
		start := time.Now()
		if _, _, err := s.Token(ctx, id); err != nil {
			t.Fatalf("Token after a 429 with Retry-After 3s (deadline 10s): %v", err)
		}
		took := time.Since(start)
		var times []time.Time
		for _, r := range e.IMDSRequests() {
			if r.ClientID == id {
				times = append(times, r.Time)
			}
		}
		if len(times) != 2 || times[1].Sub(times[0]) < 3*time.Second {
			t.Fatalf("IMDS requests at %v; want 2, the second at least 3 s after the first", times)
		}
		t.Logf("429 + Retry-After 3s: token after %v", took.Round(time.Millisecond))
	})

	t.Run("IMDS 429 Retry-After beyond the deadline fails fast", func(t *testing.T) {
		id, s, _ := fresh(t, "throttled-long", 2*time.Second)
		e.SetIMDSFault(azureemu.IMDSFault{Status: http.StatusTooManyRequests, RetryAfter: 30 * time.Second})
		defer e.SetIMDSFault(azureemu.IMDSFault{})
		start := time.Now()
		_, _, err := s.Token(ctx, id)
		if err == nil || !strings.Contains(err.Error(), "429") || !strings.Contains(err.Error(), "may not be asked again") {
			t.Fatalf("error %v, want the 429 and the wait named", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("took %v, want at most the 2 s deadline", d)
		}
		if n := countFor(e, id, 0); n != 1 {
			t.Fatalf("%d IMDS requests, want 1 (no retry before Retry-After)", n)
		}
	})

	t.Run("invalidate drops only the refused token", func(t *testing.T) {
		id, s, _ := fresh(t, "invalidate", 10*time.Second)
		t1, _, err := s.Token(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		s.Invalidate(id, t1)
		t2, _, err := s.Token(ctx, id)
		if err != nil || t2 == t1 {
			t.Fatalf("after Invalidate: err %v, new token %v", err, t2 != t1)
		}
		s.Invalidate(id, t1) // stale: another session already caused the refresh
		if t3, _, _ := s.Token(ctx, id); t3 != t2 || countFor(e, id, 0) != 2 {
			t.Fatalf("a stale Invalidate caused a fetch (%d requests)", countFor(e, id, 0))
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBrief: azidentity's multi-line error for an identity IMDS does not know becomes one short
// line that keeps the reason (IMDS's status and error_description).
func TestBrief(t *testing.T) {
	clearManagedIdentityEnv(t)
	e := startEmulator(t, azureemu.Config{})
	s := newSource(t, Config{IMDSEndpoint: e.IMDSEndpoint(), MaxRetries: -1})
	_, _, err := s.Token(context.Background(), uuid.NewString())
	if err == nil || !strings.Contains(err.Error(), "\n") {
		t.Fatalf("Token of an unknown identity: %v; want azidentity's multi-line error", err)
	}
	got := Brief(err)
	if strings.Contains(got, "\n") || len(got) > 250 || strings.Contains(got, "GET http") || strings.Contains(got, "troubleshoot") {
		t.Errorf("Brief is not one short line (%d bytes): %q", len(got), got)
	}
	for _, want := range []string{"get managed identity token (client ID", "400 Bad Request", "Identity not found"} {
		if !strings.Contains(got, want) {
			t.Errorf("Brief lacks %q: %q", want, got)
		}
	}
	if one := errors.New("IMDS: connection refused"); Brief(one) != one.Error() {
		t.Errorf("Brief of a one-line error: %q", Brief(one))
	}
}
