package pgproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/ferryhq/ferry/node/tokensource"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Serve handles one client connection until it ends. It always closes conn
// and, when Config.Audit is set, always writes the connection's audit record
// (start, end, outcome, error) and its queries. A CancelRequest is forwarded
// to the server of the session it names and is not recorded as a connection.
// Cancelling ctx ends the session.
func (p *Proxy) Serve(ctx context.Context, conn net.Conn, t Target, s Session) {
	start := time.Now()
	log := p.logger.With("user", s.User, "resource", t.Resource, "client", s.ClientAddr)
	defer conn.Close()
	g := &sessionGuard{conn: conn}
	defer p.recoverSession(ctx, g, log) // a panic ends this session only (recover.go); runs before conn.Close
	// Until the relay starts (it has its own shutdown path), ending ctx just closes.
	stopLogin := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopLogin()

	conn.SetDeadline(start.Add(p.cfg.LoginTimeout))
	loginCtx, cancelLogin := context.WithTimeout(ctx, p.cfg.LoginTimeout)
	defer cancelLogin()

	st, err := readStartup(conn)
	if err == nil && st.cancel != nil {
		p.serveCancel(ctx, st.cancel, t, s, log)
		return
	}
	database := ""
	if err == nil {
		database, err = chooseDatabase(t, st.msg.Parameters)
	}
	if err == nil {
		err = checkStartup(st)
	}
	if err == nil && s.Denied != nil {
		outcome := audit.OutcomeDenied
		if s.Denied.Outcome != "" {
			outcome = s.Denied.Outcome
		}
		err = fatal(outcome, s.Denied.Code, s.Denied.Message, "", s.Denied.Hint, s.Denied)
	}
	if err == nil && t.Credentials != nil {
		err = resolveCredentials(loginCtx, &t)
	}
	// The record of a connection starts once its StartupMessage says which
	// database it wants (or once it has failed).
	rec := audit.Connection{Start: start, User: s.User, Resource: t.Resource, ClientAddr: s.ClientAddr, Database: database}
	if st != nil && st.msg != nil {
		rec.OriginalUser, rec.OriginalDatabase = st.msg.Parameters["user"], st.msg.Parameters["database"]
		rec.Role = t.label()
	}
	id, auditErr := p.startRecord(ctx, log, rec)
	if err == nil && auditErr != nil {
		err = auditUnavailable(auditErr)
	}
	g.id = id
	if err != nil {
		p.refuse(ctx, conn, id, err, log)
		return
	}

	up, err := p.login(loginCtx, t, database, st, log)
	if err != nil {
		p.refuse(ctx, conn, id, err, log)
		return
	}
	server := up.hc.Conn
	defer server.Close()
	// What the session needs of the login, taken out so that nothing used after the login reply
	// refers to up: the rest of it (pgconn's read and write buffers, its config) is not held for
	// as long as the session lasts.
	pid, secret, scs := up.hc.PID, up.hc.SecretKey, up.hc.ParameterStatuses["standard_conforming_strings"]
	end := audit.ConnectionEnd{Outcome: audit.OutcomeOK, UpstreamPID: pid}
	g.pid = pid

	key, forget, err := p.registerCancel(t, s.User, pid, secret)
	if err != nil {
		p.refuse(ctx, conn, id, fatal(audit.OutcomeFailed, "58000", err.Error(), "", "", err), log)
		return
	}
	defer forget()
	if p.cfg.TestHook != nil {
		conn = p.cfg.TestHook(conn)
	}
	if err := writeLoginReply(conn, st, up, key); err != nil {
		end.Error = "client went away during login: " + err.Error()
		p.endRecord(ctx, id, end, log)
		return
	}
	if !stopLogin() {
		end.Error = endNotice(ctx).Message
		p.endRecord(ctx, id, end, log)
		return
	}
	conn.SetDeadline(time.Time{})
	server.SetDeadline(time.Time{})
	log.Info("pgproxy: session started", "database", database, "role", t.label(), "upstream_pid", pid)

	// A session whose statements cannot be recorded is ended (fail closed): the
	// audit log's writer calls back when one of its records could not be written.
	sctx, endSession := context.WithCancelCause(ctx)
	defer endSession(nil)
	recorder := p.recorder(id, endSession)
	g.rec = recorder
	var recordErr error // written by the server-side relay goroutine only (and finish, after it)
	tr := newTracker(p.cfg.MaxAuditSQL, t.RedactParams, func(q audit.Query) {
		if recorder == nil {
			return
		}
		q.User, q.Resource = s.User, t.Resource
		if err := recorder.Record(sctx, q); err != nil {
			// The recorder has failed, or the log is closed: the session must not go on unaudited.
			endSession(auditEnded())
			if recordErr == nil {
				recordErr = err
				log.Error("pgproxy: audit query record not written; ending the session", "err", err)
			}
		}
	})
	if recorder != nil {
		// The server's answers after a record wait until it is durable (heldWriter).
		tr.hold = func() error {
			if recordErr != nil {
				return recordErr
			}
			if err := recorder.Durable(sctx); err != nil {
				endSession(auditEnded()) // a no-op when the session was ending already
				return err
			}
			return nil
		}
	}
	tr.maxPending = maxPendingRequests
	tr.setParameter("standard_conforming_strings", scs)
	// A session the node ends (grant revoked, user suspended or deleted, resource deleted, or its
	// audit records cannot be written) also stops what it runs upstream: the server connection is
	// closed first, so that nothing more of the client's reaches the server, then the running
	// statement is cancelled with the server's own key, and the backend is terminated (a statement
	// can catch a cancel, not a termination), so that nothing it runs finishes or commits. The
	// session ends only after that.
	stopped := make(chan struct{})
	stopUpstream := context.AfterFunc(sctx, func() {
		defer close(stopped)
		if policyEnd(sctx) == nil {
			return // node shutdown: the connection is closed, as before
		}
		ended := time.Now()
		server.Close()
		p.cancelUpstream(ctx, cancelEntry{target: t, user: s.User, pid: pid, secret: secret}, log)
		p.terminateUpstream(ctx, t, pid, ended, log)
	})
	var stats relayStats
	g.stats = &stats
	end.Error = p.relay(sctx, conn, server, tr, &stats, t.Resource)
	if !stopUpstream() {
		<-stopped
	}
	if r := policyEnd(sctx); r != nil && r.Outcome != "" {
		end.Outcome = r.Outcome // ended by the node's policy: revoked, suspended, ... and not "ok"
	}
	// Requests the server got but never answered are recorded too (the
	// recorder takes them after the session's context has ended).
	if n := tr.finish(); n > 0 && end.Error == "" {
		end.Error = fmt.Sprintf("the session ended with %d request(s) the server had not answered (recorded as %s)", n, Unanswered)
	}
	end.BytesFromClient, end.BytesFromServer = stats.fromClient.Load(), stats.fromServer.Load()
	end.QueriesDropped = p.closeRecorder(ctx, recorder)
	if f := tr.fatalSeen(); f.code != "" {
		end.SQLState = f.code
	}
	log.Info("pgproxy: session ended", "duration", time.Since(start).Round(time.Millisecond), "reason", end.Error,
		"bytes_from_client", end.BytesFromClient, "bytes_from_server", end.BytesFromServer)
	p.endRecord(ctx, id, end, log)
}

// chooseDatabase picks the upstream database from the client's "database"
// parameter. libpq (psql) sends the user name as the database when none was
// given, so an empty value, or one equal to the client's user name, means
// "the resource's database". Any other value is used as asked when the
// resource is not restricted, and refused when it is.
func chooseDatabase(t Target, params map[string]string) (string, error) {
	asked := params["database"]
	if asked == "" || asked == t.Database || asked == params["user"] {
		return t.Database, nil
	}
	if t.RestrictDatabase {
		return t.Database, fatal(audit.OutcomeDenied, "3D000",
			fmt.Sprintf("database %q is not allowed for resource %s: connections are restricted to database %q", asked, t.Resource, t.Database),
			"", fmt.Sprintf("Connect with dbname=%s, or ask an administrator to lift the database restriction of the resource.", t.Database), nil)
	}
	return asked, nil
}

// checkStartup refuses what the proxy cannot serve.
func checkStartup(st *startup) error {
	if r, ok := st.msg.Parameters["replication"]; ok && !strings.EqualFold(r, "false") && !strings.EqualFold(r, "off") && r != "0" && !strings.EqualFold(r, "no") {
		return fatal(audit.OutcomeDenied, "0A000",
			fmt.Sprintf("replication connections (replication=%s) are not supported through the Ferry proxy", r),
			"", "Connect without the replication parameter; streaming and logical replication must reach the server directly.", nil)
	}
	return nil
}

// runtimeParams are the client's startup parameters passed to the server as
// session defaults (application_name, client_encoding, DateStyle, TimeZone,
// options, ...): all but user, database, replication and _pq_.* options.
func runtimeParams(client map[string]string) map[string]string {
	out := make(map[string]string, len(client))
	for k, v := range client {
		switch {
		case k == "user", k == "database", k == "replication", strings.HasPrefix(k, "_pq_."):
			continue
		}
		out[k] = v
	}
	return out
}

// login checks t, gets an access token and logs in upstream. When the server refuses the token as expired
// (FATAL 28000/28P01 whose message says "expired": a server clock ahead of the node's, or a token
// revoked early) and the token source can invalidate, the token is dropped, a new one is fetched and
// the login is tried once more, within the same login deadline; the client sees only the outcome.
func (p *Proxy) login(ctx context.Context, t Target, database string, st *startup, log *slog.Logger) (*upstream, error) {
	// A host off the allow-list does not even get a token requested for it.
	if err := t.check(); err != nil {
		return nil, err
	}
	token, err := p.token(ctx, t)
	if err != nil {
		return nil, err
	}
	up, err := connectUpstream(ctx, t, database, token, runtimeParams(st.msg.Parameters))
	inv, ok := p.cfg.Tokens.(TokenInvalidator)
	if err == nil || !ok || !tokenExpired(err) {
		return up, err
	}
	log.Warn("pgproxy: the server refused the access token as expired; retrying the login once with a new token", "err", err)
	inv.Invalidate(t.ClientID, token)
	if token, err = p.token(ctx, t); err != nil {
		return nil, err
	}
	return connectUpstream(ctx, t, database, token, runtimeParams(st.msg.Parameters))
}

// resolveCredentials reads t's username and client ID from its secret store (t.Credentials).
func resolveCredentials(ctx context.Context, t *Target) error {
	u, cid, err := t.Credentials(ctx)
	if err != nil {
		var r *Refusal
		if errors.As(err, &r) {
			return fatal(audit.OutcomeFailed, r.Code, r.Message, "", r.Hint, err)
		}
		return fatal(audit.OutcomeFailed, "08001", err.Error(), "", "", err)
	}
	if u == "" {
		return fatal(audit.OutcomeFailed, "08001", fmt.Sprintf("the username of resource %s read from its secret store is empty", t.Resource), "", "Fix the secret.", nil)
	}
	t.Username, t.ClientID = u, cid
	return nil
}

// token gets an access token for t's managed identity.
func (p *Proxy) token(ctx context.Context, t Target) (string, error) {
	if p.cfg.Tokens == nil {
		return "", fatal(audit.OutcomeFailed, "28000", "could not get an access token: the node has no token source configured", "", "Configure the node's managed identity token source.", nil)
	}
	if t.ClientIDLabel != "" {
		ctx = tokensource.WithClientIDLabel(ctx, t.ClientIDLabel)
	}
	token, _, err := p.cfg.Tokens.Token(ctx, t.ClientID)
	if err == nil && token == "" {
		err = errors.New("the token source returned an empty token")
	}
	if err != nil {
		msg := fmt.Sprintf("could not get an access token for %s to log in to resource %s: %s", t.identity(), t.Resource, tokensource.Brief(err))
		if t.ClientIDLabel != "" && t.ClientID != "" {
			msg = strings.ReplaceAll(msg, t.ClientID, t.ClientIDLabel)
			err = &scrubbed{msg: strings.ReplaceAll(err.Error(), t.ClientID, t.ClientIDLabel), orig: err}
		}
		return "", fatal(audit.OutcomeFailed, "28000", msg, "",
			"Check that the managed identity is assigned to the node's VM and that IMDS is reachable from the node, then retry.", err)
	}
	return token, nil
}

// tokenExpired reports whether a login failed because the server found the access token expired.
func tokenExpired(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || (pgErr.Code != "28000" && pgErr.Code != "28P01") {
		return false
	}
	return strings.Contains(strings.ToLower(pgErr.Message), "expired")
}

// writeLoginReply completes the client's login: [NegotiateProtocolVersion],
// AuthenticationOk, the server's ParameterStatus messages, its login notices,
// the proxy's BackendKeyData, ReadyForQuery (protocol §55.2.1).
func writeLoginReply(conn net.Conn, st *startup, up *upstream, key *pgproto3.BackendKeyData) error {
	var buf []byte
	var err error
	add := func(m pgproto3.BackendMessage) {
		if err == nil {
			buf, err = m.Encode(buf)
		}
	}
	if st.minor > 0 || len(st.unrecognized) > 0 {
		slices.Sort(st.unrecognized)
		add(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.unrecognized})
	}
	add(&pgproto3.AuthenticationOk{})
	for _, name := range slices.Sorted(maps.Keys(up.hc.ParameterStatuses)) {
		add(&pgproto3.ParameterStatus{Name: name, Value: up.hc.ParameterStatuses[name]})
	}
	for _, n := range up.notices {
		add(&pgproto3.NoticeResponse{Severity: n.Severity, SeverityUnlocalized: n.SeverityUnlocalized, Code: n.Code, Message: n.Message, Detail: n.Detail, Hint: n.Hint})
	}
	add(key)
	tx := up.hc.TxStatus
	if tx == 0 {
		tx = 'I'
	}
	add(&pgproto3.ReadyForQuery{TxStatus: tx})
	if err != nil {
		return fmt.Errorf("encode login reply: %w", err)
	}
	_, err = conn.Write(buf)
	return err
}

// refuse tells the client why it is refused (unless it has gone) and ends the record.
func (p *Proxy) refuse(ctx context.Context, conn net.Conn, id int64, err error, log *slog.Logger) {
	end := audit.ConnectionEnd{Outcome: audit.OutcomeFailed, Error: err.Error()}
	if errors.Is(err, errClientGone) {
		log.Info("pgproxy: client left before login", "err", err)
	} else {
		oe := asOutcome(err)
		end.Outcome, end.Error, end.SQLState = oe.outcome, oe.resp.Message, oe.resp.Code
		log.Warn("pgproxy: connection refused", "outcome", end.Outcome, "code", oe.resp.Code, "err", err)
		if buf, encErr := oe.resp.Encode(nil); encErr == nil {
			conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			conn.Write(buf)
		}
	}
	p.endRecord(ctx, id, end, log)
}

// serveCancel forwards a CancelRequest to the server of the session it names, when the tunnel peer
// that sent it is that session's user and is still granted the resource (s.Denied is nil). A
// CancelRequest refused for any of these reasons gets a connection record with outcome "denied"
// (no answer goes to the client, as PostgreSQL gives none); one that names no session is only
// logged, as it is what a client sends for a session that has just ended.
func (p *Proxy) serveCancel(ctx context.Context, cr *pgproto3.CancelRequest, t Target, s Session, log *slog.Logger) {
	e, ok := p.lookupCancel(cr.ProcessID, cr.SecretKey)
	var why, code string
	switch {
	case s.Denied != nil:
		why, code = s.Denied.Message, s.Denied.Code
	case !ok:
		log.Info("pgproxy: CancelRequest for no known session ignored", "pid", cr.ProcessID)
		return
	case e.target.Resource != t.Resource:
		why, code = fmt.Sprintf("ferry: the key names a session of another resource than %q", t.Resource), "42501"
	case e.user != s.User:
		why, code = fmt.Sprintf("ferry: the key names a session of another user than %q", s.User), "42501"
	}
	if why != "" {
		end := audit.ConnectionEnd{Outcome: audit.OutcomeDenied, Error: "CancelRequest refused: " + why, SQLState: code}
		if ok {
			end.UpstreamPID = e.pid
		}
		log.Warn("pgproxy: CancelRequest refused", "pid", cr.ProcessID, "reason", why)
		id, _ := p.startRecord(ctx, log, audit.Connection{Start: time.Now(), User: s.User, Resource: t.Resource, ClientAddr: s.ClientAddr})
		p.endRecord(ctx, id, end, log)
		return
	}
	if err := forwardCancel(ctx, e); err != nil {
		log.Warn("pgproxy: CancelRequest not forwarded", "err", err)
		return
	}
	log.Info("pgproxy: CancelRequest forwarded", "upstream_pid", e.pid)
}

// cancelUpstream cancels what the session e runs on its server, after its ctx has ended.
func (p *Proxy) cancelUpstream(ctx context.Context, e cancelEntry, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := forwardCancel(ctx, e); err != nil {
		log.Warn("pgproxy: the ended session's statement could not be cancelled on the server", "upstream_pid", e.pid, "err", err)
		return
	}
	log.Info("pgproxy: the ended session's statement was cancelled on the server", "upstream_pid", e.pid)
}

// terminateUpstream ends server backend pid of a session the node has ended, with
// pg_terminate_backend over a login of its own as the resource's role (which may signal its own
// backends): a statement can catch a CancelRequest (PL/pgSQL "exception when query_canceled") and go
// on to commit, but not a termination. Only a backend of that role that started before the session
// ended (measured on the server's clock) is terminated, so a process ID the server has since given to
// a new backend is left alone.
func (p *Proxy) terminateUpstream(ctx context.Context, t Target, pid uint32, ended time.Time, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.LoginTimeout)
	defer cancel()
	st := &startup{msg: &pgproto3.StartupMessage{Parameters: map[string]string{"application_name": "ferry-node: ending a revoked session"}}}
	up, err := p.login(ctx, t, t.Database, st, log)
	if err != nil {
		log.Warn("pgproxy: the ended session's server backend could not be terminated: login", "upstream_pid", pid, "err", t.scrub(err.Error()))
		return
	}
	pc, err := pgconn.Construct(up.hc)
	if err != nil {
		up.hc.Conn.Close()
		log.Warn("pgproxy: the ended session's server backend could not be terminated", "upstream_pid", pid, "err", t.scrub(err.Error()))
		return
	}
	defer pc.Close(ctx)
	since := fmt.Sprintf("%d milliseconds", time.Since(ended).Milliseconds())
	res := pc.ExecParams(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid = $1 AND usename = current_user AND backend_start < now() - $2::interval`,
		[][]byte{[]byte(fmt.Sprint(pid)), []byte(since)}, nil, nil, nil).Read()
	switch {
	case res.Err != nil:
		log.Warn("pgproxy: the ended session's server backend could not be terminated", "upstream_pid", pid, "err", t.scrub(res.Err.Error()))
	case len(res.Rows) == 1 && string(res.Rows[0][0]) == "t":
		log.Info("pgproxy: the ended session's server backend was terminated", "upstream_pid", pid)
	default:
		log.Info("pgproxy: the ended session's server backend had already gone", "upstream_pid", pid)
	}
}

// auditCtx is for audit writes that must happen even when the session's ctx
// has been cancelled (node shutdown).
func auditCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// startRecord writes the start of a connection's record. An error (the
// audit log is unavailable, after its retries) refuses the session.
func (p *Proxy) startRecord(ctx context.Context, log *slog.Logger, c audit.Connection) (int64, error) {
	if p.cfg.Audit == nil {
		return 0, nil
	}
	actx, cancel := auditCtx(ctx)
	defer cancel()
	c.NodeID = p.cfg.NodeID
	id, err := p.cfg.Audit.StartConnection(actx, c)
	if err != nil {
		log.Error("pgproxy: audit connection start; the session is refused", "err", err)
		return 0, err
	}
	return id, nil
}

// auditSQLState is the SQLSTATE of a session refused or ended because the
// audit log cannot record it: 58030 io_error (class 58, system error: an
// error external to PostgreSQL itself).
const auditSQLState = "58030"

// auditUnavailable is the refusal of a session whose start cannot be recorded.
func auditUnavailable(err error) error {
	return fatal(audit.OutcomeFailed, auditSQLState, "the audit log is unavailable: the Ferry node cannot record this connection, so it is refused", "",
		"Sessions are refused until the node can write its audit log again; tell the node's administrator (see ferry-node's log).", err)
}

// auditEnded is why a running session is ended when its statements cannot be recorded.
func auditEnded() *Refusal {
	return &Refusal{Code: auditSQLState,
		Message: "terminating connection: the audit log is unavailable: the Ferry node cannot record this session's statements",
		Hint:    "Sessions are refused until the node can write its audit log again; tell the node's administrator (see ferry-node's log)."}
}

// recorder returns the audit recorder of connection id, or nil without an
// audit log. When a record cannot be written, end ends the session.
func (p *Proxy) recorder(id int64, end context.CancelCauseFunc) QueryRecorder {
	if p.cfg.Audit == nil || id == 0 {
		return nil
	}
	return p.cfg.Audit.QueryRecorder(id, func(error) { end(auditEnded()) })
}

// closeRecorder waits until the session's query records are written and
// returns how many were not.
func (p *Proxy) closeRecorder(ctx context.Context, r QueryRecorder) int64 {
	if r == nil {
		return 0
	}
	actx, cancel := auditCtx(ctx)
	defer cancel()
	return r.Close(actx)
}

func (p *Proxy) endRecord(ctx context.Context, id int64, end audit.ConnectionEnd, log *slog.Logger) {
	if p.cfg.Audit == nil || id == 0 {
		return
	}
	actx, cancel := auditCtx(ctx)
	defer cancel()
	if err := p.cfg.Audit.EndConnection(actx, id, time.Now(), end); err != nil {
		log.Error("pgproxy: audit connection end", "err", err)
	}
}
