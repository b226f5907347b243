package controlapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/catalog"
)

// logFilter reads the log endpoints' filters from the URL query: user,
// resource, since and until (RFC 3339), limit.
func logFilter(r *http.Request) (user, resource string, since, until time.Time, err error) {
	q := r.URL.Query()
	for _, p := range []struct {
		name string
		to   *time.Time
	}{{"since", &since}, {"until", &until}} {
		if s := q.Get(p.name); s != "" {
			if *p.to, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return "", "", since, until, fmt.Errorf("bad %s %q: want an RFC 3339 time such as 2025-01-02T15:04:05Z", p.name, s)
			}
		}
	}
	return q.Get("user"), q.Get("resource"), since, until, nil
}

// connectionFilter is logFilter's, and node: the ID or name of the node that carried the
// connection. A name is looked up in the catalog; an ID is taken as it is, so that the records of
// a node whose record was deleted are still found.
func (sv *Server) connectionFilter(r *http.Request) (audit.ConnectionFilter, error) {
	u, res, since, until, err := logFilter(r)
	f := audit.ConnectionFilter{User: u, Resource: res, Since: since, Until: until, Limit: limit(r)}
	if err != nil {
		return f, err
	}
	node := r.URL.Query().Get("node")
	if node == "" || api.ValidNodeID(node) {
		f.NodeID = node
		return f, nil
	}
	n, err := sv.cat.Node(r.Context(), node)
	if err != nil {
		return f, fmt.Errorf("filter the connection log by node: %w", err) // err names the node
	}
	f.NodeID = n.ID
	return f, nil
}

// nodeNames maps node IDs to names, for the connection log; empty when the catalog cannot say
// (the log is still served, with the IDs).
func (sv *Server) nodeNames(ctx context.Context) map[string]string {
	ns, err := sv.cat.Nodes(ctx)
	if err != nil {
		sv.log.Warn("connection log: node names unavailable; showing node IDs only", "err", err)
		return nil
	}
	names := make(map[string]string, len(ns))
	for _, n := range ns {
		names[n.ID] = n.Name
	}
	return names
}

// writeFilterError answers a bad filter: 404 for a node that does not exist, 400 otherwise.
func writeFilterError(w http.ResponseWriter, err error) {
	if errors.Is(err, catalog.ErrNotFound) {
		writeError(w, http.StatusNotFound, err)
		return
	}
	writeError(w, http.StatusBadRequest, err)
}

func queryFilter(r *http.Request) (audit.QueryFilter, error) {
	u, res, since, until, err := logFilter(r)
	return audit.QueryFilter{User: u, Resource: res, Since: since, Until: until, Limit: limit(r)}, err
}

func apiConnection(c audit.Connection) api.Connection {
	return api.Connection{ID: c.ID, Start: c.Start, End: c.End, DurationMS: c.Duration().Milliseconds(), User: c.User, Resource: c.Resource,
		ClientAddr: c.ClientAddr, NodeID: c.NodeID, OriginalUser: c.OriginalUser, OriginalDatabase: c.OriginalDatabase, Role: c.Role, Database: c.Database,
		UpstreamPID: c.UpstreamPID, BytesFromClient: c.BytesFromClient, BytesFromServer: c.BytesFromServer, QueriesDropped: c.QueriesDropped,
		Outcome: c.Outcome, SQLState: c.SQLState, Error: c.Error}
}

func apiQuery(q audit.Query) api.Query {
	return api.Query{ID: q.ID, ConnectionID: q.ConnectionID, Time: q.Time, DurationUS: q.Duration.Microseconds(), User: q.User, Resource: q.Resource,
		Protocol: q.Protocol, Statement: q.Statement, SQL: q.SQL, SQLLength: q.SQLLength, SQLSHA256: q.SQLSHA256, Params: q.Params,
		Command: q.Command, Rows: q.Rows, SQLState: q.SQLState, Error: q.Error}
}
