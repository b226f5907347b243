package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ferryhq/ferry/node/store"
	"github.com/ferryhq/ferry/resource"
)

// LoopbackRange returns the org's loopback range (default 127.0.0.1/32).
func (c *Catalog) LoopbackRange(ctx context.Context) (netip.Prefix, error) {
	v, err := c.Setting(ctx, SettingLoopbackRange, resource.DefaultLoopbackRange.String())
	if err != nil {
		return netip.Prefix{}, err
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read setting %s: %q is not a range: %w", SettingLoopbackRange, v, err)
	}
	return p, nil
}

// addressing is what address assignment needs from the org settings.
type addressing struct {
	subnet, loopback netip.Prefix
	mode             string
}

func (c *Catalog) addressing(ctx context.Context) (addressing, error) {
	var a addressing
	var err error
	if a.subnet, err = c.VNSubnet(ctx); err != nil {
		return a, err
	}
	if a.loopback, err = c.LoopbackRange(ctx); err != nil {
		return a, err
	}
	a.mode, err = c.Setting(ctx, SettingDefaultMode, resource.ModeLoopback)
	return a, err
}

// AddResource validates r, checks its name and DNS alias are unique, assigns its virtual networking
// and loopback addresses, and stores it. It returns the stored resource (with ID and addresses).
// Validation errors come back as returned by resource.Validate; a taken name wraps ErrConflict.
func (c *Catalog) AddResource(ctx context.Context, r resource.Resource) (resource.Resource, error) {
	if r.Type == "" {
		r.Type = resource.TypeAzurePostgresMI
	}
	if r.Port == 0 {
		r.Port = resource.DefaultPort
	}
	r.ID = "rs-" + randomHex(8)
	out, err := c.store(ctx, r, true)
	if err != nil {
		return r, fmt.Errorf("add resource: %w", err)
	}
	return out, nil
}

// UpdateResource applies edit to the resource named name and stores the result, reassigning its
// addresses when a property they derive from changed (port override -1 asks for a new automatic
// port). It returns the resource before and after.
func (c *Catalog) UpdateResource(ctx context.Context, name string, edit func(*resource.Resource)) (before, after resource.Resource, err error) {
	return c.update(ctx, name, edit, false, false)
}

// update is UpdateResource that can also force a new VN or loopback address.
func (c *Catalog) update(ctx context.Context, name string, edit func(*resource.Resource), newVN, newLoopback bool) (before, after resource.Resource, err error) {
	before, err = c.ResourceByName(ctx, name)
	if err != nil {
		return before, before, err
	}
	r := before
	r.Tags = cloneTags(before.Tags)
	edit(&r)
	r.ID, r.Type = before.ID, before.Type
	moved := r.PortOverride == resource.PortOverrideAuto ||
		r.PortOverride != before.PortOverride || r.IPAddress != before.IPAddress || r.Port != before.Port ||
		r.ConnectivityMode != before.ConnectivityMode || r.BindInterface != before.BindInterface
	if moved || newVN {
		r.VNAddress = ""
	}
	if moved || newLoopback {
		r.LoopbackAddress = ""
	}
	after, err = c.store(ctx, r, false)
	if err != nil {
		return before, after, fmt.Errorf("update resource %s: %w", name, err)
	}
	return before, after, nil
}

// checkGivenAddresses refuses addresses given with r (the admin API takes the whole resource) that
// the node would never assign: a loopback address that is not a loopback IP and port (clients would
// listen there: "0.0.0.0:5432" opens the database to the network), a VN address outside the org's
// subnet or on one of its reserved addresses. Another resource's address is refused by the table's
// unique columns.
func checkGivenAddresses(r resource.Resource, subnet netip.Prefix) error {
	if r.LoopbackAddress != "" {
		ap, err := netip.ParseAddrPort(r.LoopbackAddress)
		if err != nil || ap.Port() == 0 || resource.CheckLoopbackIP(ap.Addr().String()) != nil {
			return &resource.FieldError{Field: "loopback_address", Message: fmt.Sprintf("%q is not a loopback IP address and port (%s); leave it out to have one assigned", r.LoopbackAddress, resource.LoopbackIPs)}
		}
	}
	if r.VNAddress != "" {
		ap, err := netip.ParseAddrPort(r.VNAddress)
		if err != nil || ap.Port() == 0 || !resource.UsableVNAddr(subnet, ap.Addr()) {
			return &resource.FieldError{Field: "vn_address", Message: fmt.Sprintf("%q is not a usable address and port of the org's subnet %s; leave it out to have one assigned", r.VNAddress, subnet)}
		}
	}
	return nil
}

// givenAddressFree refuses an address given with a resource that another resource has (read under
// the catalog's resource lock, so the answer holds until the write commits).
// asConflict makes an address the resource asks for that another resource holds
// (resource.ErrAddressTaken) wrap ErrConflict too, as a taken name or DNS name does.
func asConflict(err error) error {
	if errors.Is(err, resource.ErrAddressTaken) {
		return fmt.Errorf("%w (%w)", err, ErrConflict)
	}
	return err
}

func givenAddressFree(field, addr string, taken resource.Taken) error {
	ap, err := netip.ParseAddrPort(addr)
	if addr == "" || err != nil || !taken.AddrPorts[ap] {
		return nil
	}
	return fmt.Errorf("%s: %q %w on another resource; leave it out to have one assigned", field, addr, ErrConflict)
}

func cloneTags(t map[string]string) map[string]string {
	if t == nil {
		return nil
	}
	out := make(map[string]string, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

// store validates r and inserts it (insert) or replaces the row with r.ID, in one transaction that
// holds the catalog's address lock (store.Tx.Lock), so that concurrent admins on any node never get
// the same name, alias or address: the taken addresses are read and the new ones written with no
// other writer in between, and the table's unique columns refuse what slips past anyway. Empty
// addresses are assigned.
func (c *Catalog) store(ctx context.Context, r resource.Resource, insert bool) (resource.Resource, error) {
	if err := r.Validate(); err != nil {
		return r, err
	}
	org, err := c.addressing(ctx)
	if err != nil {
		return r, err
	}
	if r.ConnectivityMode == "" {
		r.ConnectivityMode = org.mode
	}
	tx, err := c.db.Begin(ctx)
	if err != nil {
		return r, err
	}
	defer tx.Rollback()
	if err := tx.Lock(ctx, "catalog.resources"); err != nil {
		return r, err
	}
	if err := c.checkStore(ctx, tx, r); err != nil {
		return r, err
	}
	if err := c.checkCluster(ctx, tx, r); err != nil {
		return r, err
	}
	var n int
	if err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT count(*) FROM resources WHERE name = ? AND id != ?`), r.Name, r.ID).Scan(&n); err != nil {
		return r, err
	}
	if n > 0 {
		return r, fmt.Errorf("a resource named %q %w", r.Name, ErrConflict)
	}
	if r.Subdomain != "" {
		// DNS names are case-insensitive (clients resolve them in lower case): taken in any case.
		if err := tx.QueryRowContext(ctx, c.db.Rebind(`SELECT count(*) FROM resources WHERE lower(subdomain) = lower(?) AND id != ?`), r.Subdomain, r.ID).Scan(&n); err != nil {
			return r, err
		}
		if n > 0 {
			return r, fmt.Errorf("the DNS name %q %w on another resource", r.Subdomain, ErrConflict)
		}
	}
	vnTaken, lbTaken := resource.NewTaken(), resource.NewTaken()
	rows, err := tx.QueryContext(ctx, c.db.Rebind(`SELECT vn_address, loopback_address FROM resources WHERE id != ?`), r.ID)
	if err != nil {
		return r, err
	}
	for rows.Next() {
		var vn, lb string
		if err := rows.Scan(&vn, &lb); err != nil {
			rows.Close()
			return r, err
		}
		vnTaken.Add(vn)
		lbTaken.Add(lb)
	}
	rows.Close()
	if err := checkGivenAddresses(r, org.subnet); err != nil {
		return r, err
	}
	if err := givenAddressFree("loopback_address", r.LoopbackAddress, lbTaken); err != nil {
		return r, err
	}
	if err := givenAddressFree("vn_address", r.VNAddress, vnTaken); err != nil {
		return r, err
	}
	if r.VNAddress == "" {
		if r.VNAddress, err = resource.AssignVN(&r, org.subnet, vnTaken); err != nil {
			return r, asConflict(err)
		}
	}
	if r.LoopbackAddress == "" {
		if r.LoopbackAddress, err = resource.AssignLoopback(&r, org.loopback, lbTaken); err != nil {
			return r, asConflict(err)
		}
	}
	if r.PortOverride == resource.PortOverrideAuto {
		r.PortOverride = 0
	}
	data, err := json.Marshal(r)
	if err != nil {
		return r, fmt.Errorf("encode: %w", err)
	}
	if insert {
		_, err = tx.ExecContext(ctx, c.db.Rebind(`INSERT INTO resources(name, id, vn_address, loopback_address, subdomain, data, created_at) VALUES(?,?,?,?,?,?,?)`),
			r.Name, r.ID, r.VNAddress, r.LoopbackAddress, r.Subdomain, string(data), time.Now().Unix())
	} else {
		_, err = tx.ExecContext(ctx, c.db.Rebind(`UPDATE resources SET name = ?, vn_address = ?, loopback_address = ?, subdomain = ?, data = ? WHERE id = ?`),
			r.Name, r.VNAddress, r.LoopbackAddress, r.Subdomain, string(data), r.ID)
	}
	if store.IsConflict(err) {
		return r, fmt.Errorf("store: its name, DNS name or an address %w on another resource", ErrConflict)
	}
	if err != nil {
		return r, fmt.Errorf("store: %w", err)
	}
	if err := tx.Notify(ctx); err != nil {
		return r, err
	}
	if err := tx.Commit(); err != nil {
		return r, fmt.Errorf("commit: %w", err)
	}
	return r, nil
}

// DeleteResource deletes a resource by name; it wraps ErrNotFound.
func (c *Catalog) DeleteResource(ctx context.Context, name string) error {
	return c.execOne(ctx, "delete resource "+name, `DELETE FROM resources WHERE name = ?`, name)
}

// Resources returns every resource, sorted by name.
func (c *Catalog) Resources(ctx context.Context) ([]resource.Resource, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT data FROM resources ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list resources: %w", err)
	}
	defer rows.Close()
	var out []resource.Resource
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("list resources: %w", err)
		}
		var r resource.Resource
		if err := json.Unmarshal([]byte(data), &r); err != nil {
			return nil, fmt.Errorf("list resources: decode: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (c *Catalog) resourceWhere(ctx context.Context, what, clause string, arg any) (resource.Resource, error) {
	var r resource.Resource
	var data string
	err := c.db.QueryRowContext(ctx, c.db.Rebind(`SELECT data FROM resources WHERE `+clause), arg).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("%s: %w", what, err)
	}
	if err := json.Unmarshal([]byte(data), &r); err != nil {
		return r, fmt.Errorf("%s: decode: %w", what, err)
	}
	return r, nil
}

// ResourceByName returns the named resource; it wraps ErrNotFound.
func (c *Catalog) ResourceByName(ctx context.Context, name string) (resource.Resource, error) {
	return c.resourceWhere(ctx, fmt.Sprintf("resource %q", name), `name = ?`, name)
}

// ResourceByVNAddress returns the resource whose virtual networking address is ap; it wraps
// ErrNotFound.
func (c *Catalog) ResourceByVNAddress(ctx context.Context, ap netip.AddrPort) (resource.Resource, error) {
	return c.resourceWhere(ctx, fmt.Sprintf("look up resource at %s", ap), `vn_address = ?`, ap.String())
}
