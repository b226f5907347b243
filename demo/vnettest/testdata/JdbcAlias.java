import java.sql.*;

/** Connects with the JDBC URL given as the argument, exactly as copied, and prints key=value lines. */
public class JdbcAlias {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0]);
             PreparedStatement ps = c.prepareStatement("SELECT current_user, current_database(), ?::int + 1")) {
            ps.setInt(1, 41);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                System.out.println("user=" + rs.getString(1));
                System.out.println("db=" + rs.getString(2));
                System.out.println("answer=" + rs.getInt(3));
            }
        }
    }
}
