package tunnel

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
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

// ErrBadPeerKey is returned (wrapped) for a public key that cannot be a WireGuard peer: the
// all-zero key, a low-order Curve25519 point, or the interface's own key.
var ErrBadPeerKey = errors.New("not a usable WireGuard public key")

// checkPeerKey refuses pub as a peer of the interface with private key priv (public key self).
// The general test for a low-order point is the one the Noise protocol's DH needs: X25519 of our
// private key and pub must not be all zero (crypto/ecdh refuses that result). A clamped private
// key is a multiple of the cofactor 8, so this refuses exactly the points of order 1, 2, 4 and 8
// on the curve and its twist, in every encoding (u ≥ p, bit 255 set): libsodium's and
// wireguard-go's blocklists and more. wireguard-go itself would accept such a peer and only fail
// each handshake. Non-canonical spellings of any point are refused too (canonical).
func checkPeerKey(priv *ecdh.PrivateKey, self, pub Key) error {
	switch {
	case pub.IsZero():
		return fmt.Errorf("the all-zero key is %w", ErrBadPeerKey)
	case pub == self:
		return fmt.Errorf("public key %s is this interface's own key, %w", pub, ErrBadPeerKey)
	case !canonical(pub):
		return fmt.Errorf("public key %s is not in canonical form (bit 255 set or u ≥ 2^255-19; wg pubkey never makes one, "+
			"and another spelling of an enrolled key would pass for a new one), %w", pub, ErrBadPeerKey)
	}
	p, err := ecdh.X25519().NewPublicKey(pub[:])
	if err != nil {
		return fmt.Errorf("public key %s: %w: %v", pub, ErrBadPeerKey, err)
	}
	if _, err := priv.ECDH(p); err != nil {
		return fmt.Errorf("public key %s is a low-order Curve25519 point (no shared secret can come of it), %w", pub, ErrBadPeerKey)
	}
	return nil
}

// canonical reports whether pub is the one 32-byte spelling of its u-coordinate (RFC 7748 §5):
// bit 255 clear and u < p = 2^255-19. X25519 ignores bit 255 and reduces u mod p, so every other
// spelling is the same point as a canonical key, but other bytes to WireGuard and the catalog.
func canonical(pub Key) bool {
	if pub[31]&0x80 != 0 {
		return false
	}
	// u ≥ p only when bytes 1..30 are 0xff, byte 31 is 0x7f and byte 0 is ≥ 0xed.
	if pub[31] != 0x7f || pub[0] < 0xed {
		return true
	}
	for _, b := range pub[1:31] {
		if b != 0xff {
			return true
		}
	}
	return false
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
