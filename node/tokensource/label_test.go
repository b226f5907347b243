package tokensource

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferryhq/ferry/azureemu"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestTokenLabelHidesClientID: a client ID read from a secret store is a secret value, so a
// Token call under WithClientIDLabel logs the label (the secret's path), never the client ID, for
// a token it got, one it failed to get (IMDS's error quotes its request URL), and one dropped.
func TestTokenLabelHidesClientID(t *testing.T) {
	clearManagedIdentityEnv(t)
	user := identity("ferry-label")
	e := startEmulator(t, azureemu.Config{Users: []azureemu.Identity{user}})
	logs := &lockedBuffer{}
	s, err := New(Config{IMDSEndpoint: e.IMDSEndpoint(), Timeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unassigned := uuid.NewString()
	for _, tc := range []struct {
		name, clientID, label string
		wantErr               bool
	}{
		{"token", user.ClientID, "secret se-1/pg-client", false},
		{"refused", unassigned, "secret se-1/pg-other", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, _, err := s.Token(WithClientIDLabel(ctx, tc.label), tc.clientID)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Token: %v, want error %v", err, tc.wantErr)
			}
			if err == nil {
				s.Invalidate(tc.clientID, tok)
			} else if strings.Contains(err.Error(), tc.clientID) {
				t.Errorf("the error holds the client ID: %v", err)
			}
			l := logs.String()
			if !strings.Contains(l, tc.label) {
				t.Errorf("the log does not name %q:\n%s", tc.label, l)
			}
			if strings.Contains(l, tc.clientID) {
				t.Errorf("the log holds the client ID %s:\n%s", tc.clientID, l)
			}
		})
	}
}
