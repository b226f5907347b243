package tunnel

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// Key is a Curve25519 key of a WireGuard interface or peer (private or public, 32 bytes).
type Key [32]byte

// GenerateKey returns a new private key from crypto/rand, clamped as wg(8) genkey does
// (RFC 7748 §5).
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("tunnel: generate key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// ParseKey parses a key in wg(8)'s text form: standard base64 of 32 bytes (44 characters).
func ParseKey(s string) (Key, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("tunnel: parse key: not base64: %w", err)
	}
	if len(b) != len(Key{}) {
		return Key{}, fmt.Errorf("tunnel: parse key: %d bytes, want 32", len(b))
	}
	return Key(b), nil
}

// PublicKey returns the public key of private key k: X25519(k, 9) (RFC 7748 §6.1).
func (k Key) PublicKey() Key {
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil { // only on a wrong length, impossible for [32]byte
		panic(fmt.Sprintf("tunnel: X25519 private key: %v", err))
	}
	return Key(priv.PublicKey().Bytes())
}

// String returns the key in wg(8)'s base64 form.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zero (an unset key).
func (k Key) IsZero() bool { return k == Key{} }

// MarshalText encodes the key as base64, so keys read and write naturally in config files.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText decodes a base64 key.
func (k *Key) UnmarshalText(b []byte) error {
	p, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// hex returns the key in the lowercase hex form of the WireGuard configuration protocol (UAPI).
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

func decodeHexKey(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(b) != len(Key{}) {
		return nil, fmt.Errorf("%d bytes, want 32", len(b))
	}
	return b, nil
}
