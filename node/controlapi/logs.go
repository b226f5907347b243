package controlapi

import (
	"fmt"
	"net/http"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/audit"
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

func connectionFilter(r *http.Request) (audit.ConnectionFilter, error) {
	u, res, since, until, err := logFilter(r)
	return audit.ConnectionFilter{User: u, Resource: res, Since: since, Until: until, Limit: limit(r)}, err
}

func queryFilter(r *http.Request) (audit.QueryFilter, error) {
	u, res, since, until, err := logFilter(r)
	return audit.QueryFilter{User: u, Resource: res, Since: since, Until: until, Limit: limit(r)}, err
}

func apiConnection(c audit.Connection) api.Connection {
	return api.Connection{ID: c.ID, Start: c.Start, End: c.End, DurationMS: c.Duration().Milliseconds(), User: c.User, Resource: c.Resource,
		ClientAddr: c.ClientAddr, OriginalUser: c.OriginalUser, OriginalDatabase: c.OriginalDatabase, Role: c.Role, Database: c.Database,
		UpstreamPID: c.UpstreamPID, BytesFromClient: c.BytesFromClient, BytesFromServer: c.BytesFromServer, QueriesDropped: c.QueriesDropped,
		Outcome: c.Outcome, SQLState: c.SQLState, Error: c.Error}
}

func apiQuery(q audit.Query) api.Query {
	return api.Query{ID: q.ID, ConnectionID: q.ConnectionID, Time: q.Time, DurationUS: q.Duration.Microseconds(), User: q.User, Resource: q.Resource,
		Protocol: q.Protocol, Statement: q.Statement, SQL: q.SQL, SQLLength: q.SQLLength, SQLSHA256: q.SQLSHA256, Params: q.Params,
		Command: q.Command, Rows: q.Rows, SQLState: q.SQLState, Error: q.Error}
}
