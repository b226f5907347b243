package api

import (
	"errors"
	"strings"
	"testing"
)

// TestParseEnrollTokenMessages: each kind of bad token gets a message in words that says it is not
// an enrollment token and to copy it again, never the decoder's own text.
func TestParseEnrollTokenMessages(t *testing.T) {
	good := EnrollToken{URL: "https://node.example.com:8443", CertSHA256: strings.Repeat("ab", 32), Secret: "s3cret"}
	tests := []struct{ name, token, want string }{
		{"empty", "", "does not start with"},
		{"another text", "hello", "does not start with"},
		{"not base64", EnrollTokenPrefix + "!!!", "damaged or cut short"},
		{"base64 of no JSON", EnrollTokenPrefix + "garbage", "damaged or cut short"},
		{"cut short", good.Encode()[:40], "damaged or cut short"},
		{"http URL", EnrollToken{URL: "http://x", CertSHA256: good.CertSHA256, Secret: "s"}.Encode(), "no https address"},
		{"no secret", EnrollToken{URL: "https://x", CertSHA256: good.CertSHA256}.Encode(), "lacks"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseEnrollToken(tc.token)
			if !errors.Is(err, ErrInvalidEnrollToken) {
				t.Fatalf("error %v does not wrap ErrInvalidEnrollToken", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, "not a valid Ferry enrollment token") || !strings.Contains(msg, tc.want) || !strings.Contains(msg, "copy") {
				t.Errorf("message %q does not say it is not a valid token, %q, and to copy it again", msg, tc.want)
			}
			for _, raw := range []string{"invalid character", "illegal base64", `\u`, "unexpected end"} {
				if strings.Contains(msg, raw) {
					t.Errorf("message %q carries the decoder's text %q", msg, raw)
				}
			}
		})
	}
}

// TestParseEnrollTokenRefusesWhatItWouldEcho: a token is refused when its fingerprint is not hex
// (it passed the parse and failed later with the hex decoder's text, not as a bad token) or its
// node URL holds characters a terminal acts on or that disguise it (C1 controls such as CSI
// U+009B, bidirectional overrides, spaces): the URL is echoed in every login error.
func TestParseEnrollTokenRefusesWhatItWouldEcho(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	tests := []struct{ name, url, fp string }{
		{"fingerprint not hex", "https://node.example.com", strings.Repeat("zz", 32)},
		{"CSI in the host", "https://node\u009b2J.example.com", fp},
		{"bidi override in the host", "https://node\u202eelpmaxe.example.com", fp},
		{"NEL in the path", "https://node.example.com/\u0085x", fp},
		{"space in the host", "https://node .example.com", fp},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := EnrollToken{URL: tc.url, CertSHA256: tc.fp, Secret: "s3cret"}.Encode()
			tok, err := ParseEnrollToken(s)
			if !errors.Is(err, ErrInvalidEnrollToken) {
				t.Fatalf("accepted %+q (err %v)", tok, err)
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), tc.url) {
				t.Errorf("the error echoes the token: %q", err)
			}
		})
	}
}
