package api

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseEnrollToken: any text must parse or fail with a message, never panic; a token that
// parses has an https node URL, a 64-character fingerprint and a secret, and survives Encode and
// ParseEnrollToken unchanged.
func FuzzParseEnrollToken(f *testing.F) {
	good := EnrollToken{URL: "https://node.example.com:8443", CertSHA256: strings.Repeat("ab", 32), Secret: "s3cret"}
	for _, seed := range []string{
		good.Encode(),
		"  " + good.Encode() + "\n",
		EnrollTokenPrefix,
		EnrollTokenPrefix + "e30",     // {}
		EnrollTokenPrefix + "bnVsbA",  // null
		EnrollTokenPrefix + "W10",     // []
		EnrollTokenPrefix + "!!!",     // not base64url
		EnrollTokenPrefix + "garbage", // base64url, not JSON
		EnrollToken{URL: "http://x", CertSHA256: good.CertSHA256, Secret: "s"}.Encode(),
		EnrollToken{URL: "https://x", CertSHA256: "ab", Secret: "s"}.Encode(),
		"ferry-enroll",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseEnrollToken(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "parse enrollment token: ") || !errors.Is(err, ErrInvalidEnrollToken) {
				t.Fatalf("error %q lacks its prefix or does not wrap ErrInvalidEnrollToken", err)
			}
			return
		}
		if !strings.HasPrefix(strings.ToLower(tok.URL), "https://") || len(tok.CertSHA256) != 64 || tok.Secret == "" {
			t.Fatalf("accepted %+v", tok)
		}
		again, err := ParseEnrollToken(tok.Encode())
		if err != nil || again != tok {
			t.Fatalf("round trip: %+v -> %+v, %v", tok, again, err)
		}
	})
}
