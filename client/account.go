package client

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/tunnel"
)

// accountCheckInterval is the least time between two device status queries while the node does not
// answer through the tunnel.
const accountCheckInterval = 5 * time.Second

// account is what the node's enrollment endpoint last said about this device while the tunnel did
// not carry the control API: a suspended user's or a deleted device's WireGuard peer is removed, so
// the node's answer to the keyed status query (api.QueryDeviceStatus) is how the client tells
// "suspended by an administrator" and "removed" from "unreachable".
type account struct {
	mu      sync.Mutex
	status  string // api.DeviceSuspended, api.DeviceUnknown, api.DeviceActive, or "" (not known)
	checked time.Time
}

// noteReachable forgets the account status once the control API answers again.
func (a *account) noteReachable() {
	a.mu.Lock()
	a.status, a.checked = "", time.Time{}
	a.mu.Unlock()
}

// checkAccount asks the node's enrollment endpoint for this device's status, at most once per
// accountCheckInterval, and returns the last status known.
func (d *Daemon) checkAccount(ctx context.Context) string {
	a := &d.account
	a.mu.Lock()
	if time.Since(a.checked) < accountCheckInterval {
		defer a.mu.Unlock()
		return a.status
	}
	a.checked = time.Now()
	a.mu.Unlock()

	d.mu.Lock()
	st := d.state
	d.mu.Unlock()
	status, err := queryAccount(ctx, st)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		d.log.Debug("device status query failed", "err", err)
		return a.status
	}
	if status != a.status && status != api.DeviceActive {
		d.log.Warn("the node says this device is "+status, "user", st.User)
	}
	a.status = status
	return status
}

func queryAccount(ctx context.Context, st State) (string, error) {
	priv, err := tunnel.ParseKey(st.PrivateKey)
	if err != nil {
		return "", fmt.Errorf("device key: %w", err)
	}
	nodePub, err := tunnel.ParseKey(st.NodePublicKey)
	if err != nil {
		return "", fmt.Errorf("node key: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ds, err := api.QueryDeviceStatus(ctx, st.NodeURL, st.NodeCertSHA256, priv, nodePub)
	if err != nil {
		return "", err
	}
	return ds.Status, nil
}

// accountError is what Status says instead of "unreachable" for a suspended user or a removed device.
func accountError(status, user string) string {
	switch status {
	case api.DeviceSuspended:
		return fmt.Sprintf("user %s was suspended by an administrator; ask a Ferry administrator to reinstate you", user)
	case api.DeviceUnknown:
		return "this device was removed from ferry-node by an administrator; run `ferry logout`, then `ferry login TOKEN` with a new token"
	}
	return ""
}
