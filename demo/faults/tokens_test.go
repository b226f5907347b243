package faults_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/azureemu"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/demo"
	"github.com/ferryhq/ferry/internal/testenv"
	"github.com/ferryhq/ferry/node"
)

// tokenLifetime is the emulator's token lifetime: the 2 minutes scaled down to 20 s.
const tokenLifetime = 20 * time.Second

func needBins(t *testing.T, bins ...string) {
	t.Helper()
	testenv.NeedBins(t, bins...)
}

// startEnv starts a demo installation for one test and stops it at cleanup. Health checks run
// only at resource creation, so they do not add token requests to the counts.
func startEnv(t *testing.T, opt demo.Options) *demo.Env {
	t.Helper()
	opt.LoopbackIP = demo.RandomLoopbackIP()
	prev := opt.NodeConfig
	opt.NodeConfig = func(c *node.Config) {
		c.HealthInterval = node.Duration(time.Hour)
		if prev != nil {
			prev(c)
		}
	}
	return testenv.StartParallel(t, opt) // the fault tests run in parallel: no leak check
}

// query connects to the resource's loopback address with pgx's pgconn, runs sql and closes.
func query(ctx context.Context, conn, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, conn+" connect_timeout=20")
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return "", nil
	}
	return string(res[0].Rows[0][0]), nil
}

// imds counts the emulator's IMDS answers for the demo identity, by status (0 = all).
func imds(env *demo.Env, status int) int {
	n := 0
	for _, r := range env.Emu.IMDSRequests() {
		if strings.EqualFold(r.ClientID, demo.ClientID) && (status == 0 || r.Status == status) {
			n++
		}
	}
	return n
}

// lastToken is the time of the last successful IMDS answer for the demo identity.
func lastToken(env *demo.Env) time.Time {
	var at time.Time
	for _, r := range env.Emu.IMDSRequests() {
		if strings.EqualFold(r.ClientID, demo.ClientID) && r.Status == http.StatusOK {
			at = r.Time
		}
	}
	return at
}

// TestTokensOverTime runs the token acceptance points against one installation whose emulator
// issues 20 s tokens.
func TestTokensOverTime(t *testing.T) {
	t.Parallel() // after TestLoad, alongside the other fault tests
	needBins(t, "psql")
	env := startEnv(t, demo.Options{TokenLifetime: tokenLifetime})
	conn := client.ConnString(env.Resource)
	ctx := context.Background()

	t.Run("token refused as expired: one refresh, transparent", func(t *testing.T) {
		if _, err := query(ctx, conn, "SELECT 1"); err != nil {
			t.Fatalf("first login: %v", err)
		}
		before := imds(env, 0)
		env.Emu.RevokeIssuedTokens()
		got, err := query(ctx, conn, "SELECT current_user")
		if err != nil || got != demo.Role {
			t.Fatalf("login after the server refused the cached token: %q, %v", got, err)
		}
		if n := imds(env, 0) - before; n != 1 {
			t.Fatalf("%d IMDS requests for the refused token, want 1", n)
		}
	})

	t.Run("50 simultaneous logins after a refusal share one IMDS request", func(t *testing.T) {
		before := imds(env, 0)
		env.Emu.RevokeIssuedTokens()
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for range 50 {
			wg.Go(func() {
				if _, err := query(ctx, conn, "SELECT 1"); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("login: %v", err)
		}
		if n := imds(env, 0) - before; n != 1 {
			t.Fatalf("%d IMDS requests for 50 simultaneous logins, want 1", n)
		}
	})

	t.Run("session across two token lifetimes with IMDS 500 around a refresh", func(t *testing.T) {
		// A fresh token now, so the refresh point is known: the emulator's expiry is the issue
		// time truncated to the second plus the lifetime; the node refreshes half the lifetime
		// before expiry and uses the token until 5% before.
		env.Emu.RevokeIssuedTokens()
		if _, err := query(ctx, conn, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		issued := lastToken(env)
		exp := issued.Truncate(time.Second).Add(tokenLifetime)
		life := exp.Sub(issued)
		refreshAt := exp.Add(-life / 2)
		usableTo := exp.Add(-life / 20)
		const loops = 42 // seconds of pg_sleep(1): over two lifetimes
		sessionCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(sessionCtx, "psql", conn, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-")
		cmd.Stdin = strings.NewReader(strings.Repeat("SELECT 'slept' FROM pg_sleep(1);\n", loops))
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=20")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()

		// IMDS answers 500 for half a token lifetime centred on the refresh point: the 60 s
		// around a refresh of 2-minute tokens, scaled down.
		outageStart, outageEnd := refreshAt.Add(-life/4), refreshAt.Add(life/4)
		time.AfterFunc(time.Until(outageStart), func() {
			env.Emu.SetIMDSFault(azureemu.IMDSFault{Status: http.StatusInternalServerError})
		})
		time.AfterFunc(time.Until(outageEnd), func() { env.Emu.SetIMDSFault(azureemu.IMDSFault{}) })
		defer env.Emu.SetIMDSFault(azureemu.IMDSFault{})
		errors500 := imds(env, http.StatusInternalServerError)

		// New connections: one inside the refresh window during the outage, the rest every 3 s.
		type attempt struct {
			at  time.Duration
			err error
		}
		var attempts []attempt
		try := func() {
			_, err := query(ctx, conn, "SELECT 1")
			attempts = append(attempts, attempt{time.Since(start).Round(10 * time.Millisecond), err})
		}
		time.Sleep(time.Until(refreshAt.Add(100 * time.Millisecond)))
		inWindow := time.Now()
		try()
		if !inWindow.Before(usableTo) {
			t.Logf("the in-window login started %v after the token's usable end (slow machine)", inWindow.Sub(usableTo))
		}
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
	wait:
		for {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("the psql session was interrupted after %v: %v\n%s", time.Since(start), err, out.String())
				}
				break wait
			case <-tick.C:
				try()
			}
		}
		took := time.Since(start)
		if n := strings.Count(out.String(), "slept"); n != loops {
			t.Fatalf("the session ran %d of %d statements:\n%s", n, loops, out.String())
		}
		failed := 0
		for _, a := range attempts {
			if a.err != nil {
				failed++
				t.Errorf("new connection at +%v failed: %v", a.at, a.err)
			}
		}
		n500 := imds(env, http.StatusInternalServerError) - errors500
		if n500 == 0 {
			t.Errorf("no IMDS request failed during the outage: the refresh did not fall in it (refresh at %v, outage %v..%v)", refreshAt, outageStart, outageEnd)
		}
		t.Logf("session: %d x pg_sleep(1) in %v across token lifetimes of %v, never interrupted; %d new connections, %d failed; IMDS answered 500 %d times during the outage",
			loops, took.Round(time.Millisecond), tokenLifetime, len(attempts), failed, n500)
	})
}
