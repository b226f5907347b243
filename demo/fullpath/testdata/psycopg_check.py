"""Exercises psycopg2 through Ferry; prints key=value lines for the Go test. Argument: a libpq conninfo."""
import sys

import psycopg2

conn = psycopg2.connect(sys.argv[1], application_name="ferry-psycopg")
cur = conn.cursor()
cur.execute("SELECT %s::text AS psy_params, %s::int, %s::bytea, %s IS NULL", ("it's", 42, b"\x00\xffbin", None))
t, i, b, isnull = cur.fetchone()
print("params=%s|%d|%s|%s" % (t, i, bytes(b).hex(), isnull))
cur.close()
# A named (server-side) cursor: DECLARE ... CURSOR and FETCH in batches of itersize.
named = conn.cursor(name="ferry_cursor")
named.itersize = 100
named.execute("SELECT g AS psy_cursor FROM generate_series(1, 1000) g")
print("cursor_rows=%d" % sum(1 for _ in named))
named.close()
conn.commit()
conn.close()
