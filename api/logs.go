package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// LogFilter selects log records; zero fields match everything. Since and
// Until bound the record's start time: [Since, Until).
type LogFilter struct {
	User, Resource string
	Since, Until   time.Time
	Limit          int // 0 = the node's default (100)
	// Node is the ID or name of the node that carried the connection: the connection log only
	// (QueryLog refuses it).
	Node string
}

// query encodes f as the URL query of the log endpoints:
// user, resource, node, since and until (RFC 3339), limit.
func (f LogFilter) query() string {
	v := url.Values{}
	if f.User != "" {
		v.Set("user", f.User)
	}
	if f.Resource != "" {
		v.Set("resource", f.Resource)
	}
	if f.Node != "" {
		v.Set("node", f.Node)
	}
	if !f.Since.IsZero() {
		v.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		v.Set("limit", strconv.Itoa(f.Limit))
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// ConnectionLog returns the connection-log records matching f, newest first (admin only).
func (c *Client) ConnectionLog(ctx context.Context, f LogFilter) ([]Connection, error) {
	var l ConnectionList
	return l.Connections, c.do(ctx, http.MethodGet, "/v1/admin/logs/connections"+f.query(), nil, &l)
}

// QueryLog returns the query-log records matching f, newest first (admin only).
func (c *Client) QueryLog(ctx context.Context, f LogFilter) ([]Query, error) {
	if f.Node != "" {
		return nil, errors.New("query log: there is no node filter; filter the connection log by node (ConnectionLog) instead")
	}
	var l QueryList
	return l.Queries, c.do(ctx, http.MethodGet, "/v1/admin/logs/queries"+f.query(), nil, &l)
}
