package node_test

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
	"github.com/ferryhq/ferry/node"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/tunnel"
)

// bareNode is a real ferry-node on loopback without PostgreSQL: enrollment, WireGuard and the
// control API. IMDS and DNS point at a closed loopback port, so nothing leaves the machine.
type bareNode struct {
	*node.Node
	dir string
	cfg node.Config
	log *syncBuffer
}

func startBareNode(t *testing.T) *bareNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := &bareNode{dir: filepath.Join(t.TempDir(), "node"), log: &syncBuffer{}, cfg: node.Config{
		PublicHost:   "127.0.0.1",
		EnrollListen: "127.0.0.1:0",
		IMDSEndpoint: "http://127.0.0.1:9",
		DNSServer:    "127.0.0.1:9",
	}}
	if _, err := node.Init(ctx, b.dir, b.cfg, node.DefaultAdmin); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	return b
}

// start starts (or restarts) the node on its state directory.
func (b *bareNode) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, b.dir, b.cfg, slog.New(slog.NewTextHandler(b.log, nil)))
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	b.Node = n
	t.Cleanup(func() { n.Close() })
}

// token issues an enrollment token for user, creating the user first if needed.
func (b *bareNode) token(t *testing.T, user string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := b.Catalog().UserInfo(ctx, user); err != nil {
		if err := b.Catalog().AddUser(ctx, user, false); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := b.EnrollToken(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// enroll posts to /v1/enroll as any HTTP client could, with a key and device name of its choosing.
func enroll(t *testing.T, tok string, key tunnel.Key, name string) (api.EnrollResponse, error) {
	t.Helper()
	p, err := api.ParseEnrollToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return api.Enroll(ctx, p, api.EnrollRequest{Secret: p.Secret, PublicKey: key.String(), DeviceName: name})
}

func wantStatus(t *testing.T, what string, err error, status int, contains string) {
	t.Helper()
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != status || !strings.Contains(se.Message, contains) {
		t.Errorf("%s: %v, want %d naming %q", what, err, status, contains)
	}
}

func newPublicKey(t *testing.T) tunnel.Key {
	t.Helper()
	k, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

// lowOrderKeys are the Curve25519 points of small order as libsodium's blocklist lists them
// (has_small_order, crypto_scalarmult/curve25519/ref10/x25519_ref10.c), each also with bit 255 set.
func lowOrderKeys(t *testing.T) map[string]tunnel.Key {
	t.Helper()
	ff := strings.Repeat("ff", 30)
	out := map[string]tunnel.Key{}
	for name, h := range map[string]string{
		"all-zero":      strings.Repeat("00", 32),
		"1 (order 1)":   "01" + strings.Repeat("00", 31),
		"order 8 (a)":   "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"order 8 (b)":   "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"p-1 (order 2)": "ec" + ff + "7f",
		"p (= 0)":       "ed" + ff + "7f",
		"p+1 (= 1)":     "ee" + ff + "7f",
	} {
		var k tunnel.Key
		if n, err := hex.Decode(k[:], []byte(h)); err != nil || n != 32 {
			t.Fatalf("%s: bad test vector", name)
		}
		out[name] = k
		k[31] |= 0x80
		out[name+", bit 255 set"] = k
	}
	return out
}

// TestEnrollRefusesUnusableKeys: /v1/enroll refuses with 400, before storing anything, the all-zero
// key, every low-order point and the node's own key; the token stays unused and then enrolls a good
// key; that key cannot be enrolled twice (409); and the node still restarts.
func TestEnrollRefusesUnusableKeys(t *testing.T) {
	n := startBareNode(t)
	ctx := context.Background()
	tok := n.token(t, "alice")
	bad := lowOrderKeys(t)
	bad["the node's own key"] = n.PublicKey()
	for name, k := range bad {
		_, err := enroll(t, tok, k, "laptop")
		wantStatus(t, "enroll with "+name, err, http.StatusBadRequest, "public_key")
	}
	if ds, err := n.Catalog().Devices(ctx); err != nil || len(ds) != 0 {
		t.Fatalf("devices after refused enrollments = %+v, %v; want none", ds, err)
	}
	if ts, err := n.Catalog().PendingEnrollTokens(ctx, "alice"); err != nil || len(ts) != 1 {
		t.Fatalf("alice's unused tokens after refused enrollments = %+v, %v; want the token still unused", ts, err)
	}
	peers, err := n.Tunnel().Peers()
	if err != nil || len(peers) != 0 {
		t.Fatalf("WireGuard peers after refused enrollments = %+v, %v; want none", peers, err)
	}
	good := newPublicKey(t)
	resp, err := enroll(t, tok, good, "laptop")
	if err != nil || resp.User != "alice" {
		t.Fatalf("enroll a good key with the same token after refusals: %+v, %v", resp, err)
	}
	_, err = enroll(t, n.token(t, "bob"), good, "another")
	wantStatus(t, "enroll an enrolled key again", err, http.StatusConflict, "already")
	if ds, err := n.Catalog().Devices(ctx); err != nil || len(ds) != 1 || ds[0].PublicKey != good.String() || ds[0].User != "alice" {
		t.Fatalf("devices = %+v, %v; want only alice's good key", ds, err)
	}
	// And nothing of the refusals keeps the node from starting again.
	n.Close()
	n.start(t)
	if peers, err := n.Tunnel().Peers(); err != nil || len(peers) != 1 || peers[0].PublicKey != good {
		t.Fatalf("peers after restart = %+v, %v; want alice's good key", peers, err)
	}
}

// TestEnrollRefusesBadDeviceNames: a device name over 64 characters or with a character that is
// not printable is refused with 400 naming device_name, and the token stays unused.
func TestEnrollRefusesBadDeviceNames(t *testing.T) {
	n := startBareNode(t)
	tok := n.token(t, "alice")
	for _, name := range []string{
		strings.Repeat("x", 65),
		strings.Repeat("x", 10000),
		"laptop\nINFO admin granted alice everything",
		"esc\x1b[2Jcleared",
		"bidi\u202egnp.exe",
		"nul\x00",
	} {
		_, err := enroll(t, tok, newPublicKey(t), name)
		wantStatus(t, "enroll with device name "+strconv.Quote(name[:min(len(name), 20)]), err, http.StatusBadRequest, "device_name")
	}
	if ds, err := n.Catalog().Devices(context.Background()); err != nil || len(ds) != 0 {
		t.Fatalf("devices after refused names = %+v, %v; want none", ds, err)
	}
	name := "Ana’s MacBook Pro — " + strings.Repeat("é", 44) // 64 characters, more bytes
	if _, err := enroll(t, tok, newPublicKey(t), name); err != nil {
		t.Fatalf("enroll with a 64-character name: %v", err)
	}
}

// storeDevicesDirectly writes devices into the catalog's file as an older ferry-node, which did not
// check keys, could have: the node must live with such rows.
func storeDevicesDirectly(t *testing.T, dir, user string, keys map[string]tunnel.Key) {
	t.Helper()
	db, err := audit.OpenDB(filepath.Join(dir, "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	i := 100
	for name, k := range keys {
		i++
		if _, err := db.Exec(`INSERT INTO devices(public_key, user_name, address, name, enrolled_at) VALUES(?,?,?,?,?)`,
			k.String(), user, "198.18.0."+strconv.Itoa(i), name, time.Now().Unix()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStartSkipsDevicesItCannotAdd: a catalog holding devices whose keys the tunnel refuses (all-zero,
// low-order, the node's own) starts anyway: those devices are skipped and logged by key, the good
// device becomes a peer.
func TestStartSkipsDevicesItCannotAdd(t *testing.T) {
	n := startBareNode(t)
	if err := n.Catalog().AddUser(context.Background(), "mallory", false); err != nil {
		t.Fatal(err)
	}
	good := newPublicKey(t)
	keys := map[string]tunnel.Key{"good": good, "own": n.PublicKey()}
	for name, k := range lowOrderKeys(t) {
		keys[name] = k
	}
	n.Close()
	storeDevicesDirectly(t, n.dir, "mallory", keys)
	n.start(t)
	peers, err := n.Tunnel().Peers()
	if err != nil || len(peers) != 1 || peers[0].PublicKey != good {
		t.Fatalf("peers = %+v, %v; want only the good device", peers, err)
	}
	logs := n.log.String()
	for name, k := range keys {
		if name != "good" && !strings.Contains(logs, k.String()) {
			t.Errorf("the log does not name the skipped device %s (%s):\n%s", name, k, logs)
		}
	}
}

// TestEnrollTokensListAndCancel: an admin lists the unused tokens (by user too) and cancels one, which
// then enrolls nothing; a non-admin may do neither; an unknown ID is 404.
func TestEnrollTokensListAndCancel(t *testing.T) {
	n := startBareNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := loginDaemon(t, n.token(t, node.DefaultAdmin))
	if err := admin.API().AddUser(ctx, api.NewUser{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	t1, err := admin.API().EnrollUser(ctx, "alice")
	if err != nil || len(t1.ID) != 16 {
		t.Fatalf("EnrollUser = %+v, %v; want a token with an ID", t1, err)
	}
	t2, err := admin.API().EnrollUser(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	bobTok := n.token(t, "bob")
	list, err := admin.API().EnrollTokens(ctx, "")
	if err != nil || len(list) != 3 {
		t.Fatalf("EnrollTokens = %+v, %v; want alice's two and bob's", list, err)
	}
	alices, err := admin.API().EnrollTokens(ctx, "alice")
	if err != nil || len(alices) != 2 || alices[0].User != "alice" || alices[0].Expired {
		t.Fatalf("EnrollTokens(alice) = %+v, %v", alices, err)
	}
	_, err = admin.API().EnrollTokens(ctx, "nobody")
	wantStatus(t, "list tokens of an unknown user", err, http.StatusNotFound, "nobody")

	got, err := admin.API().CancelEnrollToken(ctx, t1.ID)
	if err != nil || got.ID != t1.ID || got.User != "alice" {
		t.Fatalf("CancelEnrollToken = %+v, %v", got, err)
	}
	_, err = enroll(t, t1.Token, newPublicKey(t), "laptop")
	wantStatus(t, "enroll with a cancelled token", err, http.StatusForbidden, "not known")
	_, err = admin.API().CancelEnrollToken(ctx, t1.ID)
	wantStatus(t, "cancel twice", err, http.StatusNotFound, "no unused token")
	_, err = admin.API().CancelEnrollToken(ctx, "../../users/admin")
	wantStatus(t, "cancel a path", err, http.StatusNotFound, "")

	// A used token is no longer listed; bob, not an admin, may neither list nor cancel.
	bob := loginDaemon(t, bobTok)
	if list, err := admin.API().EnrollTokens(ctx, ""); err != nil || len(list) != 1 || list[0].ID != t2.ID {
		t.Fatalf("EnrollTokens after a cancel and a use = %+v, %v; want alice's second only", list, err)
	}
	_, err = bob.API().EnrollTokens(ctx, "")
	wantStatus(t, "non-admin lists tokens", err, http.StatusForbidden, "not an administrator")
	_, err = bob.API().CancelEnrollToken(ctx, t2.ID)
	wantStatus(t, "non-admin cancels a token", err, http.StatusForbidden, "not an administrator")
	acts, err := admin.API().Activities(ctx, 10)
	if err != nil || len(acts) == 0 {
		t.Fatalf("activities: %+v, %v", acts, err)
	}
	found := false
	for _, a := range acts {
		found = found || (a.Action == "user.enroll-token.cancel" && a.Target == "alice" && strings.Contains(a.Detail, t1.ID))
	}
	if !found {
		t.Errorf("no activity record of the cancel in %+v", acts)
	}
}

// loginDaemon enrolls a new client device with tok and runs its daemon until the test ends.
func loginDaemon(t *testing.T, tok string) *client.Daemon {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dirs := client.Dirs{Config: filepath.Join(t.TempDir(), "c"), Runtime: filepath.Join(t.TempDir(), "r")}
	if _, err := client.Login(ctx, dirs, tok, "test"); err != nil {
		t.Fatal(err)
	}
	d, err := client.StartDaemon(ctx, dirs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestEnrollRefusesAnotherSpellingOfAnEnrolledKey: bob, holding his own token, posts alice's
// enrolled key with bit 255 set (the same Curve25519 point, other bytes): 400 naming public_key,
// his token unused, alice's device and address untouched.
func TestEnrollRefusesAnotherSpellingOfAnEnrolledKey(t *testing.T) {
	n := startBareNode(t)
	ctx := context.Background()
	alice := newPublicKey(t)
	resp, err := enroll(t, n.token(t, "alice"), alice, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	respelled := alice
	respelled[31] |= 0x80
	_, err = enroll(t, n.token(t, "bob"), respelled, "alice's laptop")
	wantStatus(t, "enroll alice's key with bit 255 set", err, http.StatusBadRequest, "public_key")
	if ds, err := n.Catalog().Devices(ctx); err != nil || len(ds) != 1 || ds[0].User != "alice" || ds[0].Address.String() != resp.DeviceAddress {
		t.Fatalf("devices = %+v, %v; want only alice's at %s", ds, err, resp.DeviceAddress)
	}
	if ts, err := n.Catalog().PendingEnrollTokens(ctx, "bob"); err != nil || len(ts) != 1 {
		t.Fatalf("bob's unused tokens = %+v, %v; want his token still unused", ts, err)
	}
}

// TestEnrollRaces: many enrollments at once with one token, or with one key and many tokens, store
// exactly one device with exactly one WireGuard peer; the others are refused (403 used token, 409
// enrolled key), none with a server error.
func TestEnrollRaces(t *testing.T) {
	n := startBareNode(t)
	ctx := context.Background()
	const racers = 8
	race := func(reqs func(i int) (string, tunnel.Key)) []int {
		type job struct {
			p   api.EnrollToken
			key tunnel.Key
		}
		jobs := make([]job, racers)
		for i := range jobs {
			tok, key := reqs(i)
			p, err := api.ParseEnrollToken(tok)
			if err != nil {
				t.Fatal(err)
			}
			jobs[i] = job{p, key}
		}
		status := make([]int, racers)
		var wg sync.WaitGroup
		for i, j := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				_, err := api.Enroll(rctx, j.p, api.EnrollRequest{Secret: j.p.Secret, PublicKey: j.key.String(), DeviceName: "racer"})
				var se *api.StatusError
				switch {
				case err == nil:
					status[i] = http.StatusOK
				case errors.As(err, &se):
					status[i] = se.Status
				default:
					t.Errorf("racer %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		return status
	}
	count := func(status []int, s int) int {
		c := 0
		for _, x := range status {
			if x == s {
				c++
			}
		}
		return c
	}
	tok := n.token(t, "alice")
	st := race(func(int) (string, tunnel.Key) { return tok, newPublicKey(t) })
	if count(st, http.StatusOK) != 1 || count(st, http.StatusForbidden) != racers-1 {
		t.Errorf("one token, %d racers: statuses %v, want one 200 and the rest 403", racers, st)
	}
	key := newPublicKey(t)
	st = race(func(int) (string, tunnel.Key) { return n.token(t, "bob"), key })
	if count(st, http.StatusOK) != 1 || count(st, http.StatusConflict) != racers-1 {
		t.Errorf("one key, %d tokens: statuses %v, want one 200 and the rest 409", racers, st)
	}
	ds, err := n.Catalog().Devices(ctx)
	if err != nil || len(ds) != 2 {
		t.Fatalf("devices = %+v, %v; want 2", ds, err)
	}
	peers, err := n.Tunnel().Peers()
	if err != nil || len(peers) != 2 {
		t.Fatalf("peers = %+v, %v; want 2", peers, err)
	}
	if ts, err := n.Catalog().PendingEnrollTokens(ctx, "bob"); err != nil || len(ts) != racers-1 {
		t.Errorf("bob's unused tokens = %d, %v; want %d (refused ones stay unused)", len(ts), err, racers-1)
	}
}
