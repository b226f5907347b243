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

// lowOrderKeys returns the Curve25519 points of small order as libsodium's blocklist
// (has_small_order in crypto_scalarmult/curve25519/ref10/x25519_ref10.c) lists them, each also
// with bit 255 set, which X25519 ignores: the keys a peer must never be configured with.
func lowOrderKeys(t testing.TB) map[string]Key {
	t.Helper()
	ff := strings.Repeat("ff", 30)
	list := map[string]string{
		"0 (order 4)":   strings.Repeat("00", 32),
		"1 (order 1)":   "01" + strings.Repeat("00", 31),
		"order 8 (a)":   "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"order 8 (b)":   "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"p-1 (order 2)": "ec" + ff + "7f",
		"p (= 0)":       "ed" + ff + "7f",
		"p+1 (= 1)":     "ee" + ff + "7f",
	}
	out := map[string]Key{}
	for name, h := range list {
		var k Key
		if n, err := hex.Decode(k[:], []byte(h)); err != nil || n != 32 {
			t.Fatalf("%s: bad test vector: %v", name, err)
		}
		out[name] = k
		k[31] |= 0x80
		out[name+", bit 255 set"] = k
	}
	return out
}
