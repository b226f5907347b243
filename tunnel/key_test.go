package tunnel

import (
	"encoding/hex"
	"strings"
	"testing"
)

// TestPublicKeyRFC7748 checks X25519 against the test vector of RFC 7748 §6.1 (Alice).
func TestPublicKeyRFC7748(t *testing.T) {
	var priv Key
	hex.Decode(priv[:], []byte("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	want := "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
	if got := priv.PublicKey().hex(); got != want {
		t.Fatalf("PublicKey = %s, want %s", got, want)
	}
}

func TestGenerateKey(t *testing.T) {
	a, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a.IsZero() {
		t.Fatal("GenerateKey returned a repeated or zero key")
	}
	if a[0]&7 != 0 || a[31]&128 != 0 || a[31]&64 == 0 {
		t.Errorf("key %x is not clamped (RFC 7748 §5)", a)
	}
}

func TestParseKey(t *testing.T) {
	k, _ := GenerateKey()
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"round trip", k.String(), true},
		{"wg(8) example", "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", true},
		{"empty", "", false},
		{"not base64", "not a key!", false},
		{"url alphabet", strings.NewReplacer("+", "-", "/", "_").Replace("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="), false},
		{"too short", "AAAA", false},
		{"too long", k.String() + "AAAA", false},
		{"hex", k.hex(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKey(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseKey(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if tt.ok && got.String() != tt.in {
				t.Errorf("round trip = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestKeyText(t *testing.T) {
	k, _ := GenerateKey()
	b, err := k.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	var got Key
	if err := got.UnmarshalText(b); err != nil || got != k {
		t.Fatalf("UnmarshalText(MarshalText(k)) = %v, %v", got, err)
	}
	if err := got.UnmarshalText([]byte("nope")); err == nil {
		t.Fatal("UnmarshalText accepted garbage")
	}
}
