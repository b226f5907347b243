package pgproxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/node/audit"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestAuditAttacks plays attacks that try to run a statement while its
// record shows other text, through the proxy against a real PostgreSQL.
func TestAuditAttacks(t *testing.T) {
	pg := startPostgres(t)
	tp := startProxy(t, Config{Tokens: &testTokens{token: pg.token}}, pg.target())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgconn.Connect(ctx, tp.connString("sslmode=disable dbname=appdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE TABLE accounts (id int); INSERT INTO accounts SELECT generate_series(1, 10)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	count := func(where string) string {
		t.Helper()
		res, err := admin.Exec(ctx, "SELECT count(*) FROM accounts WHERE "+where).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return string(res[0].Rows[0][0])
	}
	dump := func(qs []audit.Query) string {
		var b strings.Builder
		for _, q := range qs {
			b.WriteString(q.Protocol + "|" + q.Command + "|" + q.SQLState + "|" + q.SQL + "\n")
		}
		return b.String()
	}

	t.Run("standard_conforming_strings changed by an Execute earlier in the pipeline", func(t *testing.T) {
		c := dialRaw(t, tp)
		// The SET runs by Execute; its ParameterStatus comes only at the next
		// ReadyForQuery, after the Query below has been parsed with it.
		q := `SELECT 'a\' , '; DELETE FROM accounts WHERE id = 5; SELECT '; SELECT 2; SELECT 3 \'x'`
		c.send(&pgproto3.Parse{Query: "SET standard_conforming_strings = off"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Query{String: q}, &pgproto3.Sync{})
		codes, tags := c.until(2)
		t.Logf("codes %v tags %v", codes, tags)
		c.send(&pgproto3.Terminate{})
		c.nc.Close()
		_, qs := lastSession(t, tp)
		t.Logf("records:\n%s", dump(qs))
		if count("id = 5") != "0" {
			t.Fatal("the DELETE did not run: the attack is void")
		}
		for _, r := range qs {
			if r.Command == "DELETE" && !strings.Contains(r.SQL, "DELETE FROM accounts WHERE id = 5") {
				t.Fatalf("the DELETE's record has SQL %q", r.SQL)
			}
		}
	})

	t.Run("SQL CLOSE and DECLARE reuse a protocol portal's name", func(t *testing.T) {
		c := dialRaw(t, tp)
		c.send(&pgproto3.Query{String: "BEGIN"})
		c.until(1)
		c.send(&pgproto3.Parse{Name: "h", Query: "SELECT 'harmless'"}, &pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "h"}, &pgproto3.Sync{})
		c.until(1)
		c.send(&pgproto3.Query{String: "CLOSE c; DECLARE c CURSOR FOR SELECT id FROM accounts"})
		c.until(1)
		c.send(&pgproto3.Execute{Portal: "c"}, &pgproto3.Sync{})
		codes, tags := c.until(1)
		t.Logf("codes %v tags %v", codes, tags)
		c.send(&pgproto3.Query{String: "COMMIT"})
		c.until(1)
		c.send(&pgproto3.Terminate{})
		c.nc.Close()
		_, qs := lastSession(t, tp)
		t.Logf("records:\n%s", dump(qs))
		var exec []audit.Query
		for _, r := range qs {
			if r.Protocol == "extended" && r.Command != NotExecuted {
				exec = append(exec, r)
			}
		}
		if len(exec) != 1 || exec[0].SQL != "DECLARE c CURSOR FOR SELECT id FROM accounts" || exec[0].Rows != 9 {
			t.Fatalf("the cursor's Execute is recorded as %+v", exec)
		}
	})

	t.Run("Execute of a WITH HOLD cursor after its transaction", func(t *testing.T) {
		c := dialRaw(t, tp)
		c.send(&pgproto3.Query{String: "DECLARE h CURSOR WITH HOLD FOR SELECT id FROM accounts"})
		c.until(1)
		c.send(&pgproto3.Execute{Portal: "h"}, &pgproto3.Sync{})
		if codes, tags := c.until(1); len(codes) != 0 || len(tags) != 1 || tags[0] != "SELECT 9" {
			t.Fatalf("Execute h answered %v %v", codes, tags)
		}
		c.send(&pgproto3.Terminate{})
		c.nc.Close()
		_, qs := lastSession(t, tp)
		if len(qs) != 2 || !strings.Contains(qs[1].SQL, `portal "h": no text known`) || qs[1].Rows != 9 {
			t.Fatalf("records:\n%s", dump(qs))
		}
	})

	t.Run("PREPARE and DEALLOCATE run inside a DO block", func(t *testing.T) {
		// Not fixed: server-side code can replace a prepared statement (or
		// run a portal) unseen; see "Not promised" in docs/SECURITY.md.
		t.Skip("known limit: the proxy cannot see PREPARE/DEALLOCATE run by server-side code")
		c := dialRaw(t, tp)
		c.send(&pgproto3.Parse{Name: "d", Query: "SELECT 'harmless'"}, &pgproto3.Sync{})
		c.until(1)
		c.send(&pgproto3.Query{String: "DO $$ BEGIN EXECUTE 'DEALLOCATE d'; EXECUTE 'PREPARE d AS DELETE FROM accounts WHERE id = 7'; END $$"})
		codes, tags := c.until(1)
		t.Logf("DO: %v %v", codes, tags)
		c.send(&pgproto3.Bind{PreparedStatement: "d"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		codes, tags = c.until(1)
		t.Logf("Execute: %v %v", codes, tags)
		c.send(&pgproto3.Terminate{})
		c.nc.Close()
		_, qs := lastSession(t, tp)
		t.Logf("records:\n%s", dump(qs))
		for _, r := range qs {
			if r.Command == "DELETE" && !strings.Contains(r.SQL, "DELETE") {
				t.Fatalf("the DELETE's record has SQL %q", r.SQL)
			}
		}
	})

	t.Run("SQL FETCH runs a protocol portal", func(t *testing.T) {
		c := dialRaw(t, tp)
		c.send(&pgproto3.Query{String: "BEGIN"})
		c.until(1)
		c.send(&pgproto3.Parse{Name: "f", Query: "DELETE FROM accounts WHERE id = 8 RETURNING id"}, &pgproto3.Bind{DestinationPortal: "fp", PreparedStatement: "f"}, &pgproto3.Sync{})
		c.until(1)
		c.send(&pgproto3.Query{String: "FETCH ALL FROM fp"})
		codes, tags := c.until(1)
		t.Logf("FETCH: %v %v", codes, tags)
		c.send(&pgproto3.Query{String: "COMMIT"})
		c.until(1)
		c.send(&pgproto3.Terminate{})
		c.nc.Close()
		_, qs := lastSession(t, tp)
		t.Logf("records:\n%s", dump(qs))
		t.Logf("id=8 left: %s", count("id = 8"))
		if count("id = 8") != "0" {
			t.Fatal("the FETCH did not run the DELETE: the attack is void")
		}
		var ne []audit.Query
		for _, r := range qs {
			if r.Command == NotExecuted {
				ne = append(ne, r)
			}
		}
		if len(ne) != 1 || ne[0].SQL != "DELETE FROM accounts WHERE id = 8 RETURNING id" || ne[0].Statement != "f" {
			t.Fatalf("the DELETE ran by SQL FETCH; want one %s record with its text, got %+v", NotExecuted, ne)
		}
	})
}
