package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/resource"
)

// resourceFlags binds one flag per resource property to a scratch resource, and copies the flags a
// user set onto another resource (for update). The flag names are the reference page's.
type resourceFlags struct {
	scratch      resource.Resource
	portOverride string
	tags         string
	fs           *pflag.FlagSet
	// copy copies each property, keyed by flag name, from scratch to dst.
	copy map[string]func(dst *resource.Resource)
}

// newResourceFlags registers the resource flags on fs. For add, a flag left out takes the default
// a new resource has, shown in the help; for update (forUpdate), a flag left out keeps the
// resource's current value, so the help shows neither defaults nor "required", and --name renames.
func newResourceFlags(fs *pflag.FlagSet, forUpdate bool) *resourceFlags {
	f := &resourceFlags{scratch: resource.New(""), fs: fs, copy: map[string]func(*resource.Resource){}}
	if forUpdate {
		f.scratch = resource.Resource{} // no defaults: only the flags given change anything
	}
	r := &f.scratch
	required := func(usage, when string) string {
		if forUpdate {
			return usage
		}
		return usage + " (" + when + ")"
	}
	str := func(p *string, name, usage string, set func(d *resource.Resource, v string)) {
		fs.StringVar(p, name, *p, usage)
		f.copy[name] = func(d *resource.Resource) { set(d, *p) }
	}
	boolean := func(p *bool, name, usage string, set func(d *resource.Resource, v bool)) {
		fs.BoolVar(p, name, *p, usage)
		f.copy[name] = func(d *resource.Resource) { set(d, *p) }
	}
	str(&r.Hostname, "hostname", required("server hostname, e.g. mypg.postgres.database.azure.com", "required"), func(d *resource.Resource, v string) { d.Hostname = v })
	fs.IntVar(&r.Port, "port", r.Port, "server port")
	f.copy["port"] = func(d *resource.Resource) { d.Port = r.Port }
	str(&r.Database, "database", required("database to connect to", "required"), func(d *resource.Resource, v string) { d.Database = v })
	str(&r.Username, "username", required("PostgreSQL role of the managed identity, e.g. mi_user (on a Single Server the node appends @servername with --use-azure-single-server-usernames)", "required unless --username-path"), func(d *resource.Resource, v string) { d.Username = v })
	str(&r.UsernamePath, "username-path", required("secret path of the username, secret-name[?key=field]; with --secret-store-id it replaces --username", "required with --secret-store-id"), func(d *resource.Resource, v string) { d.UsernamePath = v })
	str(&r.ManagedIdentityClientID, "managed-identity-client-id", "client ID of the user-assigned managed identity; empty: the VM's system-assigned identity", func(d *resource.Resource, v string) { d.ManagedIdentityClientID = v })
	str(&r.ManagedIdentityClientIDPath, "managed-identity-client-id-path", "secret path of the client ID, secret-name[?key=field] (optional with --secret-store-id; empty: --managed-identity-client-id, or the system-assigned identity)", func(d *resource.Resource, v string) { d.ManagedIdentityClientIDPath = v })
	boolean(&r.TLSRequired, "tls-required", "require TLS to the server, its certificate verified for the hostname (the node never logs in without it, whatever this says)", func(d *resource.Resource, v bool) { d.TLSRequired = v })
	str(&r.BindInterface, "bind-interface", "IP the client listens on: "+resource.LoopbackRule+"; empty: the node assigns one from the range", func(d *resource.Resource, v string) { d.BindInterface = v })
	str(&r.EgressFilter, "egress-filter", "nodes that may reach the server, by tags: tag:key=value terms with and (or a comma), or, not and parentheses, e.g. \"tag:env=prod and not tag:region=eastus\" (empty: any node)", func(d *resource.Resource, v string) { d.EgressFilter = v })
	str(&r.ProxyClusterID, "proxy-cluster-id", "proxy cluster to route through (empty: none, use gateways)", func(d *resource.Resource, v string) { d.ProxyClusterID = v })
	str(&r.SecretStoreID, "secret-store-id", "secret store (se-…) the username and client ID are read from (empty: none: credentials in the catalog)", func(d *resource.Resource, v string) { d.SecretStoreID = v })
	str(&r.Subdomain, "subdomain", "DNS alias in virtual networking mode", func(d *resource.Resource, v string) { d.Subdomain = v })
	str(&r.ConnectivityMode, "connectivity-mode", "loopback or virtual-networking; empty: the org's setting", func(d *resource.Resource, v string) { d.ConnectivityMode = v })
	str(&r.IPAddress, "ip-address", "IP address to use (in loopback mode: "+resource.LoopbackRule+"); empty: the node assigns one", func(d *resource.Resource, v string) { d.IPAddress = v })
	boolean(&r.RestrictDatabase, "restrict-database", "limit connections to --database", func(d *resource.Resource, v bool) { d.RestrictDatabase = v })
	boolean(&r.UseAzureSingleServerUsernames, "use-azure-single-server-usernames", "append @servername to the username (Azure Single Server only; not for Flexible Server)", func(d *resource.Resource, v bool) { d.UseAzureSingleServerUsernames = v })
	fs.StringVar(&f.portOverride, "port-override", "", "local port (loopback 1024-64999, virtual networking 1-65535); -1 = a new auto-assigned port")
	fs.StringVar(&f.tags, "tags", "", `tags as "key=value,key2=value2"`)
	if forUpdate {
		fs.StringVar(&r.Name, "name", "", "rename the resource to this name")
		f.copy["name"] = func(d *resource.Resource) { d.Name = r.Name }
	}
	return f
}

// parse completes the scratch resource from the string-typed flags.
func (f *resourceFlags) parse() error {
	var err error
	if f.scratch.PortOverride, err = resource.ParsePortOverride(f.portOverride); err != nil {
		return err
	}
	if f.scratch.Tags, err = resource.ParseTags(f.tags); err != nil {
		return err
	}
	return nil
}

// apply copies the flags the user set onto dst and returns whether any was set.
func (f *resourceFlags) apply(dst *resource.Resource) bool {
	any := false
	for name, cp := range f.copy {
		if f.fs.Changed(name) {
			cp(dst)
			any = true
		}
	}
	if f.fs.Changed("port-override") {
		dst.PortOverride, any = f.scratch.PortOverride, true
	}
	if f.fs.Changed("tags") {
		dst.Tags, any = f.scratch.Tags, true
	}
	return any
}

func invalid(err error) error { return fmt.Errorf("the resource is not valid:\n%w", err) }

func warn(w io.Writer, r resource.Resource) {
	for _, m := range r.Warnings() {
		fmt.Fprintln(w, "warning:", m)
	}
}

func datasourceAddCmd() *cobra.Command {
	add := &cobra.Command{Use: "add", Short: "Add a datasource of a given type"}
	var asJSON bool
	var file string
	mi := &cobra.Command{
		Use:   "azurepostgresmi NAME | --file FILE",
		Short: "Add an " + resource.TypeDisplayName + " resource",
		Long: `Add an Azure Database for PostgreSQL server that ferry-node reaches with its managed identity.
Omit --managed-identity-client-id to use the VM's system-assigned identity. With --file, add every
resource of a JSON file (one resource object, or an array of them, as ` + "`show --json`" + ` prints).

Example:
  ferry admin datasources add azurepostgresmi azure-pg-mi-prod \
    --hostname=mypg.postgres.database.azure.com --port=5432 --database=production \
    --username=mi_user --managed-identity-client-id=11111111-2222-3333-4444-555555555555 \
    --tls-required --tags="env=production,team=data"`,
		Args: cobra.MaximumNArgs(1),
	}
	flags := newResourceFlags(mi.Flags(), false)
	mi.Flags().BoolVar(&asJSON, "json", false, "print the stored resource as JSON")
	mi.Flags().StringVar(&file, "file", "", "add the resources of a JSON file")
	mi.RunE = func(cmd *cobra.Command, args []string) error {
		var batch []resource.Resource
		switch {
		case file != "" && len(args) == 0:
			var err error
			if batch, err = readResourceFile(file); err != nil {
				return err
			}
		case file == "" && len(args) == 1:
			if err := flags.parse(); err != nil {
				return err
			}
			r := flags.scratch
			r.Name = args[0]
			batch = []resource.Resource{r}
		default:
			return errors.New("give a NAME with flags, or --file FILE (not both)")
		}
		for i := range batch {
			batch[i].Type = resource.TypeAzurePostgresMI
			if err := batch[i].Validate(); err != nil {
				if file != "" {
					return fmt.Errorf("%s: resource %q: %w", file, batch[i].Name, invalid(err))
				}
				return invalid(err)
			}
		}
		_, ctl, err := dirsAndControl()
		if err != nil {
			return err
		}
		for _, r := range batch {
			warn(cmd.ErrOrStderr(), r)
			out, err := ctl.API().AddDatasource(cmd.Context(), r)
			if err != nil {
				return fmt.Errorf("add %s: %w", r.Name, err)
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), out); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Added %s (%s): loopback address %s, virtual networking address %s\n", out.Name, out.ID, out.LoopbackAddress, out.VNAddress)
		}
		return nil
	}
	add.AddCommand(mi)
	return add
}

func readResourceFile(path string) ([]resource.Resource, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	b = []byte(strings.TrimSpace(string(b)))
	// resource.Input: a resource that leaves tls_required out gets true, as with the flags.
	var in []resource.Input
	if len(b) > 0 && b[0] == '[' {
		err = json.Unmarshal(b, &in)
	} else {
		var one resource.Input
		err = json.Unmarshal(b, &one)
		in = []resource.Input{one}
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: not a resource or an array of resources in JSON: %w", path, err)
	}
	batch := make([]resource.Resource, len(in))
	for i := range in {
		batch[i] = in[i].Get()
	}
	for i := range batch {
		if batch[i].Port == 0 {
			batch[i].Port = resource.DefaultPort
		}
		batch[i].ID, batch[i].VNAddress, batch[i].LoopbackAddress = "", "", ""
	}
	return batch, nil
}

func datasourceListCmd() *cobra.Command {
	var filter string
	var asJSON, wide bool
	c := &cobra.Command{
		Use:   "list [--filter EXPR] [--wide | --json]",
		Short: "List the datasources in the catalog",
		Long: `List the datasources in the catalog. --filter takes name:NAME, type:TYPE, hostname:HOST or
tag:KEY=VALUE terms, comma-separated; all must match. The table fits 120 columns (long values are
cut with …); --wide shows every column in full, --json every property with the health.`,
		Args: cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			match, err := parseListFilter(filter)
			if err != nil {
				return err
			}
			l, err := c.Datasources(cmd.Context())
			if err != nil {
				return err
			}
			health := map[string]*api.Health{}
			if hs, err := c.HealthAll(cmd.Context()); err == nil {
				for i := range hs {
					health[hs[i].Resource] = &hs[i]
				}
			}
			var rs []resource.Resource
			for _, r := range l.Datasources {
				if match(r) {
					rs = append(rs, r)
				}
			}
			if asJSON {
				out := make([]listedResource, 0, len(rs))
				for _, r := range rs {
					out = append(out, listedResource{Resource: r, Health: health[r.Name]})
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			if !wide {
				fmt.Fprintln(tw, "NAME\tHOSTNAME\tDATABASE\tLOOPBACK\tHEALTH")
				for _, r := range rs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cut(r.Name, 22), cut(r.Hostname, 34), cut(r.Database, 14), cut(r.LoopbackAddress, 21), cut(shortHealth(health[r.Name]), 19))
				}
				return tw.Flush()
			}
			fmt.Fprintln(tw, "NAME\tTYPE\tHOSTNAME\tDATABASE\tUSERNAME\tIDENTITY\tLOOPBACK\tVN ADDRESS\tHEALTH\tTAGS")
			for _, r := range rs {
				id := "system-assigned"
				if r.ManagedIdentityClientID != "" {
					id = r.ManagedIdentityClientID
				}
				fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Type, r.Hostname, r.Port, r.Database, r.Username, id, r.LoopbackAddress, r.VNAddress, healthLabel(health[r.Name]), resource.FormatTags(r.Tags))
			}
			return tw.Flush()
		}),
	}
	c.Flags().StringVar(&filter, "filter", "", "only resources matching, e.g. tag:env=prod or name:azure-pg-mi-prod")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON: every property and the health")
	c.Flags().BoolVar(&wide, "wide", false, "show every column (type, username, identity, VN address, tags), uncut")
	c.MarkFlagsMutuallyExclusive("json", "wide")
	return c
}

// listedResource is one element of `datasources list --json`: the resource's properties and the
// health the table shows.
type listedResource struct {
	resource.Resource
	Health *api.Health `json:"health,omitempty"`
}

// cut shortens s to at most n runes, marking the cut with an ellipsis.
func cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// shortHealth is the narrow table's HEALTH: as healthLabel, with "not checked yet" for a resource
// whose first check has not finished.
func shortHealth(h *api.Health) string {
	if h != nil && !h.Checked {
		return "not checked yet"
	}
	return healthLabel(h)
}

// parseListFilter parses list's --filter terms.
func parseListFilter(expr string) (func(resource.Resource) bool, error) {
	if strings.TrimSpace(expr) == "" {
		return func(resource.Resource) bool { return true }, nil
	}
	var tests []func(resource.Resource) bool
	for _, term := range strings.Split(expr, ",") {
		key, val, ok := strings.Cut(strings.TrimSpace(term), ":")
		if !ok {
			return nil, fmt.Errorf("filter term %q: use name:, type:, hostname: or tag:KEY=VALUE", term)
		}
		switch key {
		case "name":
			tests = append(tests, func(r resource.Resource) bool { return r.Name == val })
		case "type":
			tests = append(tests, func(r resource.Resource) bool { return r.Type == val })
		case "hostname":
			tests = append(tests, func(r resource.Resource) bool { return strings.EqualFold(r.Hostname, val) })
		case "tag":
			f, err := resource.ParseTagFilter(term)
			if err != nil {
				return nil, err
			}
			tests = append(tests, func(r resource.Resource) bool { return f.Match(r.Tags) })
		default:
			return nil, fmt.Errorf("filter term %q: use name:, type:, hostname: or tag:KEY=VALUE", term)
		}
	}
	return func(r resource.Resource) bool {
		for _, t := range tests {
			if !t(r) {
				return false
			}
		}
		return true
	}, nil
}

func datasourceShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show NAME [--json]",
		Short: "Show every property of a datasource",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			r, err := c.Datasource(cmd.Context(), args[0])
			if err != nil {
				return missing("resource", args[0], err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), r)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for _, line := range resource.Diff(resource.Resource{}, r) {
				k, v, _ := strings.Cut(line, ": ")
				_, v, _ = strings.Cut(v, " -> ")
				fmt.Fprintf(tw, "%s\t%s\n", k, v)
			}
			if r.SecretStoreID == "" {
				fmt.Fprintf(tw, "secret_store\t%s\n", resource.SecretStoreNone)
			} else if st, err := c.SecretStore(cmd.Context(), r.SecretStoreID); err == nil {
				id := st.ManagedIdentityClientID
				if id == "" {
					id = "system-assigned identity"
				}
				fmt.Fprintf(tw, "secret_store\t%s: Azure Key Vault %s, read with %s\n", st.Name, st.VaultURI, id)
			}
			return tw.Flush()
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (every property)")
	return c
}

func datasourceUpdateCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "update NAME --FLAG=VALUE...",
		Short: "Change properties of a datasource and print what changed",
		Long: `Change the properties given as flags (the same flags as add; --name renames) and print each
change. Connected clients follow a new local address within seconds.`,
		Args: cobra.ExactArgs(1),
	}
	flags := newResourceFlags(c.Flags(), true)
	c.RunE = withAPI(func(cmd *cobra.Command, args []string, api *api.Client) error {
		if err := flags.parse(); err != nil {
			return err
		}
		cur, err := api.Datasource(cmd.Context(), args[0])
		if err != nil {
			return missing("resource", args[0], err)
		}
		next := cur
		if !flags.apply(&next) {
			return errors.New("nothing to change: give the properties to change as flags (see --help)")
		}
		if err := next.Validate(); err != nil {
			return invalid(err)
		}
		warn(cmd.ErrOrStderr(), next)
		up, err := api.UpdateDatasource(cmd.Context(), args[0], next)
		if err != nil {
			return err
		}
		if len(up.Changes) == 0 {
			fmt.Fprintln(cmd.OutOrStdout(), "No change.")
		}
		for _, ch := range up.Changes {
			fmt.Fprintln(cmd.OutOrStdout(), ch)
		}
		return nil
	})
	return c
}

func datasourceDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a datasource; open sessions to it end and clients stop listening for it",
		Args:  cobra.ExactArgs(1),
		RunE: withAPI(func(cmd *cobra.Command, args []string, c *api.Client) error {
			if err := c.DeleteDatasource(cmd.Context(), args[0]); err != nil {
				return missing("resource", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted %s.\n", args[0])
			return nil
		}),
	}
}

func settingsCmd() *cobra.Command {
	c := &cobra.Command{Use: "settings", Short: "Show or change the org's network settings"}
	show := &cobra.Command{
		Use: "show", Short: "Show the org's network settings", Args: cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			s, err := c.Settings(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "connectivity-mode\t%s\nvn-subnet\t%s\ndns-domain\t%s\nloopback-range\t%s\n", s.ConnectivityMode, s.VNSubnet, s.DNSDomain, s.LoopbackRange)
			return tw.Flush()
		}),
	}
	var s api.Settings
	set := &cobra.Command{
		Use:   "set [--connectivity-mode M] [--vn-subnet CIDR] [--dns-domain D] [--loopback-range CIDR]",
		Short: "Change the org's network settings; resources whose addresses no longer fit move",
		Args:  cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, c *api.Client) error {
			if s == (api.Settings{}) {
				return errors.New("nothing to change: give at least one setting (see --help)")
			}
			up, err := c.UpdateSettings(cmd.Context(), s)
			if err != nil {
				return err
			}
			for _, m := range up.Moved {
				fmt.Fprintln(cmd.OutOrStdout(), "moved:", m)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "connectivity-mode=%s vn-subnet=%s dns-domain=%s loopback-range=%s\n", up.Settings.ConnectivityMode, up.Settings.VNSubnet, up.Settings.DNSDomain, up.Settings.LoopbackRange)
			return nil
		}),
	}
	set.Flags().StringVar(&s.ConnectivityMode, "connectivity-mode", "", "loopback or virtual-networking")
	set.Flags().StringVar(&s.VNSubnet, "vn-subnet", "", "virtual networking subnet (RFC 1918 or 100.64.0.0/10)")
	set.Flags().StringVar(&s.DNSDomain, "dns-domain", "", "DNS domain of resource aliases")
	set.Flags().StringVar(&s.LoopbackRange, "loopback-range", "", "loopback range: 127.0.0.1/32, or e.g. 127.0.0.0/8 for one IP per resource")
	c.AddCommand(show, set)
	return c
}
