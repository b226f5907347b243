package api

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Device status query (POST /v1/device-status on the node's public HTTPS enrollment endpoint).
//
// A device whose user is suspended, or that was deleted, loses its WireGuard peer on the node, so it
// can no longer ask the control API inside the tunnel why. This query tells it, and only it: the
// request carries an HMAC-SHA256 keyed with the X25519 shared secret of the device's WireGuard key
// and the node's (both ends compute it; nobody else can), over the device's public key, the time and
// a random nonce. The node answers only a request whose MAC holds and whose time is within
// DeviceStatusSkew of its own; everything else gets 401 with the same message, whatever the key, so
// an unauthenticated caller learns nothing about any device. The answer is MACed with the same key
// over the request's nonce, so it cannot be forged or replayed to the device; the TLS connection is
// pinned to the certificate the enrollment token named, as enrollment was.

// Device statuses.
const (
	DeviceActive    = "active"    // enrolled, user not suspended
	DeviceSuspended = "suspended" // enrolled, user suspended by an administrator
	DeviceUnknown   = "unknown"   // no such device: deleted, logged out, or its user deleted
)

// DeviceStatusSkew is the largest difference between the request's time and the node's clock.
const DeviceStatusSkew = 5 * time.Minute

// DeviceStatusRequest is the body of POST /v1/device-status.
type DeviceStatusRequest struct {
	PublicKey string `json:"public_key"` // the device's WireGuard public key, base64
	Time      int64  `json:"time"`       // Unix seconds
	Nonce     string `json:"nonce"`      // 16 random bytes, hex
	MAC       string `json:"mac"`        // hex HMAC-SHA256, see DeviceStatusMAC
}

// DeviceStatus is the answer to POST /v1/device-status.
type DeviceStatus struct {
	Status string `json:"status"` // DeviceActive, DeviceSuspended or DeviceUnknown
	User   string `json:"user,omitempty"`
	MAC    string `json:"mac"` // hex HMAC-SHA256 over the request's nonce, Status and User
}

// DeviceStatusKey derives the MAC key of the device status query from one side's X25519 private key
// and the other side's public key (WireGuard keys, 32 bytes). It fails on a low-order public key.
func DeviceStatusKey(priv, peerPub [32]byte) ([]byte, error) {
	k, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return nil, fmt.Errorf("device status key: %w", err)
	}
	p, err := ecdh.X25519().NewPublicKey(peerPub[:])
	if err != nil {
		return nil, fmt.Errorf("device status key: %w", err)
	}
	shared, err := k.ECDH(p)
	if err != nil {
		return nil, fmt.Errorf("device status key: %w", err)
	}
	m := hmac.New(sha256.New, shared)
	m.Write([]byte("ferry device-status v1"))
	return m.Sum(nil), nil
}

func deviceStatusMAC(key []byte, parts ...string) string {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p)))
		m.Write(n[:])
		m.Write([]byte(p))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// RequestMAC is the MAC of a request (its MAC field is ignored).
func (r DeviceStatusRequest) RequestMAC(key []byte) string {
	return deviceStatusMAC(key, "request", r.PublicKey, fmt.Sprint(r.Time), r.Nonce)
}

// AnswerMAC is the MAC of an answer to the request with nonce (its MAC field is ignored).
func (s DeviceStatus) AnswerMAC(key []byte, nonce string) string {
	return deviceStatusMAC(key, "answer", nonce, s.Status, s.User)
}

// ValidMAC reports whether mac (hex) equals want, in constant time.
func ValidMAC(mac, want string) bool {
	return hmac.Equal([]byte(mac), []byte(want))
}

// QueryDeviceStatus asks the node at nodeURL (the enrollment endpoint) for the status of the device
// with private key priv; nodePub is the node's WireGuard public key; certSHA256 pins the node's TLS
// certificate as enrollment did (the enrollment token's fingerprint).
func QueryDeviceStatus(ctx context.Context, nodeURL, certSHA256 string, priv, nodePub [32]byte) (DeviceStatus, error) {
	var out DeviceStatus
	key, err := DeviceStatusKey(priv, nodePub)
	if err != nil {
		return out, fmt.Errorf("query device status: %w", err)
	}
	u, err := url.JoinPath(nodeURL, "/v1/device-status")
	if err != nil {
		return out, fmt.Errorf("query device status: bad node URL: %w", err)
	}
	pk, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return out, fmt.Errorf("query device status: %w", err)
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return out, fmt.Errorf("query device status: %w", err)
	}
	req := DeviceStatusRequest{PublicKey: base64.StdEncoding.EncodeToString(pk.PublicKey().Bytes()), Time: time.Now().Unix(), Nonce: hex.EncodeToString(nonce[:])}
	req.MAC = req.RequestMAC(key)
	want, err := hex.DecodeString(certSHA256)
	if err != nil || len(want) != sha256.Size {
		return out, errors.New("query device status: no pin of the node's certificate is kept for this device (enrolled before Ferry kept it); log in again to have it")
	}
	tlsConf := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the fingerprint pin below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("node sent no certificate")
			}
			if got := sha256.Sum256(cs.PeerCertificates[0].Raw); !bytes.Equal(got[:], want) {
				return fmt.Errorf("node certificate fingerprint %x does not match the one pinned at enrollment", got)
			}
			return nil
		},
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true}}
	b, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return out, fmt.Errorf("query device status: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return out, fmt.Errorf("query device status at %s: %w", nodeURL, err)
	}
	defer resp.Body.Close()
	if err := decode(resp, "query device status at "+nodeURL, &out); err != nil {
		return out, err
	}
	if !ValidMAC(out.MAC, out.AnswerMAC(key, req.Nonce)) {
		return DeviceStatus{}, fmt.Errorf("query device status at %s: the answer's MAC does not match; it does not come from your node", nodeURL)
	}
	return out, nil
}
