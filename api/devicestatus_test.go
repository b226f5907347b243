package api

import (
	"crypto/ecdh"
	"crypto/rand"
	"testing"
)

func x25519Pair(t *testing.T) (priv, pub [32]byte) {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	copy(priv[:], k.Bytes())
	copy(pub[:], k.PublicKey().Bytes())
	return priv, pub
}

// TestDeviceStatusMAC: both ends derive the same key; a MAC made with any other key, or over any
// changed field, does not verify; a low-order public key is refused.
func TestDeviceStatusMAC(t *testing.T) {
	devPriv, devPub := x25519Pair(t)
	nodePriv, nodePub := x25519Pair(t)
	otherPriv, _ := x25519Pair(t)
	devKey, err := DeviceStatusKey(devPriv, nodePub)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey, err := DeviceStatusKey(nodePriv, devPub)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := DeviceStatusKey(otherPriv, nodePub)
	if err != nil {
		t.Fatal(err)
	}
	req := DeviceStatusRequest{PublicKey: "pk", Time: 1700000000, Nonce: "00112233445566778899aabbccddeeff"}
	req.MAC = req.RequestMAC(devKey)
	if !ValidMAC(req.MAC, req.RequestMAC(nodeKey)) {
		t.Fatal("the node does not verify the device's MAC")
	}
	for _, tc := range []struct {
		name string
		req  DeviceStatusRequest
		key  []byte
	}{
		{"another device's key", req, otherKey},
		{"changed time", DeviceStatusRequest{PublicKey: req.PublicKey, Time: req.Time + 1, Nonce: req.Nonce, MAC: req.MAC}, nodeKey},
		{"changed nonce", DeviceStatusRequest{PublicKey: req.PublicKey, Time: req.Time, Nonce: "ff" + req.Nonce[2:], MAC: req.MAC}, nodeKey},
		{"changed key field", DeviceStatusRequest{PublicKey: "pk2", Time: req.Time, Nonce: req.Nonce, MAC: req.MAC}, nodeKey},
	} {
		if ValidMAC(tc.req.MAC, tc.req.RequestMAC(tc.key)) {
			t.Errorf("%s: the MAC verifies", tc.name)
		}
	}
	ans := DeviceStatus{Status: DeviceSuspended, User: "alice"}
	ans.MAC = ans.AnswerMAC(nodeKey, req.Nonce)
	if !ValidMAC(ans.MAC, ans.AnswerMAC(devKey, req.Nonce)) {
		t.Fatal("the device does not verify the node's answer")
	}
	forged := DeviceStatus{Status: DeviceActive, User: "alice", MAC: ans.MAC}
	if ValidMAC(forged.MAC, forged.AnswerMAC(devKey, req.Nonce)) || ValidMAC(ans.MAC, ans.AnswerMAC(devKey, "another nonce")) {
		t.Fatal("a changed or replayed answer verifies")
	}
	if _, err := DeviceStatusKey(nodePriv, [32]byte{}); err == nil {
		t.Fatal("a low-order (all-zero) public key gives a key")
	}
}
