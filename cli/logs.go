package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/api"
)

// logFlags are the filters shared by `ferry admin logs connections|queries`.
type logFlags struct {
	user, resource, since, until string
	node                         string // connections only
	limit                        int
	json                         bool
}

func (f *logFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.user, "user", "", "only records of this Ferry user")
	c.Flags().StringVar(&f.resource, "resource", "", "only records of this resource")
	c.Flags().StringVar(&f.since, "since", "", "only records that started at or after this time: RFC 3339 (2025-01-02T15:04:05Z) or a duration ago (1h, 30m)")
	c.Flags().StringVar(&f.until, "until", "", "only records that started before this time: RFC 3339 or a duration ago")
	c.Flags().IntVar(&f.limit, "limit", 50, "how many records, newest first")
	c.Flags().BoolVar(&f.json, "json", false, "print the records as JSON")
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--%s %q: want an RFC 3339 time (2025-01-02T15:04:05Z) or a duration ago (1h, 30m)", flag, s)
}

func (f *logFlags) filter() (api.LogFilter, error) {
	now := time.Now()
	since, err := parseWhen("since", f.since, now)
	if err != nil {
		return api.LogFilter{}, err
	}
	until, err := parseWhen("until", f.until, now)
	if err != nil {
		return api.LogFilter{}, err
	}
	if f.limit < 1 {
		return api.LogFilter{}, fmt.Errorf("--limit %d: give a positive number of records", f.limit)
	}
	return api.LogFilter{User: f.user, Resource: f.resource, Node: f.node, Since: since, Until: until, Limit: f.limit}, nil
}

func logsConnectionsCmd() *cobra.Command {
	var f logFlags
	c := &cobra.Command{
		Use:   "connections",
		Short: "List the newest connections through the deployment's nodes",
		Long: `List the newest connections, newest first: who connected to which resource, through which
node (NODE: the node that opened the session to the server), and how it ended (OUTCOME: ok, denied,
failed, or why the node ended it: revoked, suspended, removed, deleted, rerouted).

--node takes a node's ID or name (` + "`ferry admin nodes list`" + `); an ID also finds the records of a
node whose record was deleted.`,
		Args: cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, ac *api.Client) error {
			filter, err := f.filter()
			if err != nil {
				return err
			}
			cs, err := ac.ConnectionLog(cmd.Context(), filter)
			if err != nil {
				return err
			}
			if len(cs) == 0 {
				if err := resourceKnown(cmd, ac, f.resource); err != nil {
					return err
				}
			}
			return printConnections(cmd.OutOrStdout(), cs, f.json)
		}),
	}
	f.register(c)
	c.Flags().StringVar(&f.node, "node", "", "only connections carried by this node (ID or name)")
	return c
}

// resourceKnown is checked when --resource matched no record: a name that is not in the catalog is
// more likely a typo than a quiet resource. (A deleted resource's records are still found, so
// this runs only when there are none.)
func resourceKnown(cmd *cobra.Command, ac *api.Client, name string) error {
	if name == "" {
		return nil
	}
	if _, err := ac.Datasource(cmd.Context(), name); err != nil {
		if notFound(err) {
			return fmt.Errorf("--resource %q: no records, and no resource of that name exists (`ferry admin datasources list` lists them)", name)
		}
		return err
	}
	return nil
}

// printConnections prints connection-log records as a table or (asJSON) a JSON array. QUERIES
// DROPPED is how many of a connection's query records the node could not write: its statement list
// is incomplete by that many (and the node ended the session).
func printConnections(w io.Writer, cs []api.Connection, asJSON bool) error {
	if asJSON {
		if cs == nil {
			cs = []api.Connection{}
		}
		return printJSON(w, cs)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTART\tDURATION\tUSER\tRESOURCE\tCLIENT\tROLE@DATABASE\tPID\tBYTES IN/OUT\tQUERIES DROPPED\tNODE\tOUTCOME\tERROR")
	for _, c := range cs {
		dur := "open"
		if !c.End.IsZero() {
			dur = (time.Duration(c.DurationMS) * time.Millisecond).String()
		}
		outcome := c.Outcome
		if c.SQLState != "" {
			outcome += " " + c.SQLState
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s@%s\t%d\t%d/%d\t%d\t%s\t%s\t%s\n", c.ID, stamp(c.Start), dur, cell(c.User), cell(c.Resource),
			cell(c.ClientAddr), cell(c.Role), cell(c.Database), c.UpstreamPID, c.BytesFromClient, c.BytesFromServer, c.QueriesDropped,
			cell(nodeCell(c)), cell(outcome), cell(c.Error))
	}
	return tw.Flush()
}

// nodeCell is a connection's node as the table shows it: its name and ID, its ID when the catalog
// no longer has its record, "-" for records from before node IDs.
func nodeCell(c api.Connection) string {
	switch {
	case c.NodeID == "":
		return "-"
	case c.NodeName == "":
		return c.NodeID
	}
	return c.NodeName + " (" + c.NodeID + ")"
}

func logsQueriesCmd() *cobra.Command {
	var f logFlags
	c := &cobra.Command{
		Use:   "queries",
		Short: "List the newest statements run through the node",
		Args:  cobra.NoArgs,
		RunE: withAPI(func(cmd *cobra.Command, _ []string, ac *api.Client) error {
			filter, err := f.filter()
			if err != nil {
				return err
			}
			qs, err := ac.QueryLog(cmd.Context(), filter)
			if err != nil {
				return err
			}
			if len(qs) == 0 {
				if err := resourceKnown(cmd, ac, f.resource); err != nil {
					return err
				}
			}
			if f.json {
				if qs == nil {
					qs = []api.Query{}
				}
				return printJSON(cmd.OutOrStdout(), qs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tDURATION\tUSER\tRESOURCE\tCONNECTION\tROWS\tRESULT\tSQL")
			for _, q := range qs {
				rows := ""
				if q.Rows >= 0 {
					rows = fmt.Sprint(q.Rows)
				}
				result := q.Command
				if q.SQLState != "" {
					result = "ERROR " + q.SQLState
				}
				sql := strings.Join(strings.Fields(q.SQL), " ")
				if r := []rune(sql); len(r) > 200 {
					sql = string(r[:200]) + "…"
				}
				sql = cell(sql) // a user's SQL, on an administrator's terminal
				if q.SQLLength > 0 {
					sql += fmt.Sprintf(" [cut; %d bytes, sha256 %s]", q.SQLLength, q.SQLSHA256)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", stampMillis(q.Time),
					time.Duration(q.DurationUS)*time.Microsecond, cell(q.User), cell(q.Resource), q.ConnectionID, rows, cell(result), sql)
			}
			return tw.Flush()
		}),
	}
	f.register(c)
	return c
}
