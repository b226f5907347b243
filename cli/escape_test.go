package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
)

// hostile is text a node named by an enrollment token can send: terminal escape sequences (clear
// the screen, set the window title, a C1 CSI), a bidirectional override and a carriage return that
// would overwrite the line.
const hostile = "\x1b[2J\x1b]0;owned\x07 \u009b31m \u202eevil\r fake ok"

// TestLoginEchoesNoControlCharacters: `ferry login` with a token of a node that answers with
// control characters (in its error, or in the user name of its success) prints them escaped, never
// raw into the user's terminal, and an enrollment answer with such a user name or a device address
// that is not an address is refused rather than stored. Whoever makes the token chooses the node (its URL and the pinned
// fingerprint), so a pasted token is enough for that node to write to the terminal.
func TestLoginEchoesNoControlCharacters(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   any
	}{
		{"error answer", http.StatusForbidden, api.Error{Error: "enrollment refused: " + hostile}},
		{"error answer not JSON", http.StatusForbidden, nil},
		{"error answer of 8 MiB", http.StatusForbidden, api.Error{Error: hostile + strings.Repeat("A", 8<<20)}},
		{"enrolled as", http.StatusOK, api.EnrollResponse{User: "alice" + hostile, DeviceAddress: "198.18.0.9" + hostile,
			NodePublicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", WireGuardEndpoint: "127.0.0.1:1", VNSubnet: "100.64.0.0/10"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status)
				if tc.body == nil {
					w.Write([]byte("plain " + hostile))
					return
				}
				json.NewEncoder(w).Encode(tc.body)
			}))
			t.Cleanup(srv.Close)
			tok := api.EnrollToken{URL: srv.URL, CertSHA256: api.CertSHA256(srv.Certificate()), Secret: "s3cret"}.Encode()
			home := t.TempDir()
			t.Setenv(client.EnvConfigDir, filepath.Join(home, "cfg"))
			t.Setenv(client.EnvRuntimeDir, filepath.Join(home, "run"))

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out bytes.Buffer
			root := NewRoot(nil)
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs([]string{"login", tok})
			code := execute(ctx, root, &out)
			text := out.String()
			if code == 0 {
				t.Errorf("exit status 0: a user name or device address with control characters was taken:\n%q", text)
			}
			for _, raw := range []string{"\x1b", "\x07", "\u009b", "\u202e", "\r"} {
				if strings.Contains(text, raw) {
					t.Errorf("the output carries %q raw: %q", raw, text)
				}
			}
			if !strings.Contains(text, `\x1b[2J`) {
				t.Errorf("the output does not show the escaped text: %q", text)
			}
			if len(text) > 4096 {
				t.Errorf("the output is %d bytes long: a node's answer fills the terminal", len(text))
			}
			if strings.Contains(text, "s3cret") {
				t.Errorf("the output echoes the token's secret: %q", text)
			}
		})
	}
}
