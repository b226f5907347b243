package tokensource

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"unicode"

	"github.com/google/uuid"
)

// hostileIMDS answers every request with status line and JSON body as given, byte for byte, as a
// compromised or impersonated metadata endpoint could.
func hostileIMDS(t *testing.T, statusLine, body string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				fmt.Fprintf(c, "%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", statusLine, len(body), body)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestBriefOfHostileIMDS: what an IMDS answer carries (its status text, its error_description)
// reaches psql's FATAL, the health check and doctor's terminal through Brief: it must stay one
// line without control characters, whatever bytes the answer holds.
func TestBriefOfHostileIMDS(t *testing.T) {
	clearManagedIdentityEnv(t)
	evil := "\x1b[2J\x1b]0;owned\x07\rFAKE\u009b31m\u202e"
	tests := []struct{ name, status, body string }{
		{"raw controls in error_description", "HTTP/1.1 400 Bad Request", `{"error":"invalid_request","error_description":"Identity not found` + evil + `"}`},
		{"controls in the status text", "HTTP/1.1 400 Bad" + evil, `{"error":"invalid_request","error_description":"Identity not found"}`},
		{"long error_description", "HTTP/1.1 400 Bad Request", `{"error":"invalid_request","error_description":"` + strings.Repeat("A", 100000) + `"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSource(t, Config{IMDSEndpoint: hostileIMDS(t, tc.status, tc.body), MaxRetries: -1})
			_, _, err := s.Token(context.Background(), uuid.NewString())
			if err == nil {
				t.Fatal("a token from an IMDS that answered 400")
			}
			got := Brief(err)
			if i := strings.IndexFunc(got, func(r rune) bool { return !unicode.IsPrint(r) }); i >= 0 {
				t.Errorf("Brief holds a control or invisible character at %d: %q", i, got)
			}
			if len(got) > 1000 {
				t.Errorf("Brief is %d bytes long", len(got))
			}
		})
	}
}
