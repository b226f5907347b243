import java.sql.*;

/** Exercises pgjdbc through Ferry; prints key=value lines for the Go test. Argument: the JDBC URL. */
public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0])) {
            for (String s : new String[] {"search_path", "application_name", "statement_timeout"}) {
                try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SHOW " + s)) {
                    rs.next();
                    System.out.println(s + "=" + rs.getString(1));
                }
            }
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT current_schema()")) {
                rs.next();
                System.out.println("current_schema=" + rs.getString(1));
            }
            // prepareThreshold=1: the second execution uses a named server-side statement.
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1 AS jdbc_prep")) {
                for (int i = 1; i <= 3; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        System.out.println("prep" + i + "=" + rs.getInt(1));
                    }
                }
            }
            // setFetchSize pages through a portal (needs a transaction).
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("SELECT g AS jdbc_fetch FROM generate_series(1, 1000) g")) {
                ps.setFetchSize(100);
                int n = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) n++;
                }
                System.out.println("fetched=" + n);
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement st = c.createStatement()) {
                st.setQueryTimeout(1);
                long t0 = System.nanoTime();
                try {
                    st.execute("SELECT pg_sleep(10) AS jdbc_timeout");
                    System.out.println("timeout=none");
                } catch (SQLException e) {
                    System.out.println("timeout=" + e.getSQLState() + " after_ms=" + (System.nanoTime() - t0) / 1000000);
                }
            }
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT 'jdbc-after-timeout'")) {
                rs.next();
                System.out.println("after=" + rs.getString(1));
            }
        }
    }
}
