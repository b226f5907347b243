package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/serverhost"
)

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// hint says the likely cause of a failed step and the fix. The messages it keys on are IMDS's error
// bodies ("Identity not found", Microsoft Learn: "Troubleshoot managed identities") and Azure
// Database for PostgreSQL's login errors (SQLSTATE 28000 for Microsoft Entra principals that are not
// mapped to a role; "Use Microsoft Entra ID for authentication with Azure Database for PostgreSQL").
func (x *run) hint(step string, err error) string {
	hp := x.hostPort()
	timedOut := errors.Is(err, context.DeadlineExceeded) || isTimeout(err)
	switch step {
	case api.StepSecretStore:
		var fh interface{ FixHint() string }
		if errors.As(err, &fh) {
			return fh.FixHint()
		}
		return "the node could not read the resource's username or client ID from its secret store: check the store (ferry admin secretstores show) and the resource's paths"
	case api.StepResolve:
		if x.r.Port < 1 || x.r.Port > 65535 {
			return "fix the resource's port (Azure Database for PostgreSQL listens on 5432)"
		}
		var na *serverhost.NotAllowedError
		if errors.As(err, &na) {
			return fmt.Sprintf("the node sends access tokens only to the servers of its %s: set the resource's hostname to the server's Azure name (<server>.postgres.database.azure.com), or have the node's operator add %s to %s in the node config", serverhost.ConfigKey, x.r.Hostname, serverhost.ConfigKey)
		}
		return fmt.Sprintf("the node cannot resolve %s: check the hostname's spelling; for a private endpoint, link the private DNS zone privatelink.postgres.database.azure.com to the node's virtual network", x.r.Hostname)
	case api.StepTCP:
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Sprintf("nothing accepts connections at %s (connection refused): check the resource's port (Azure uses 5432) and that the server is started", hp)
		}
		if timedOut {
			return fmt.Sprintf("the node cannot reach %s: check the server's firewall rules or private endpoint DNS", hp)
		}
		return fmt.Sprintf("the node cannot connect to %s: check the server's firewall rules, the node's network security group and routes", hp)
	case api.StepTLS:
		var hostErr x509.HostnameError
		var authErr x509.UnknownAuthorityError
		var certErr *tls.CertificateVerificationError
		switch {
		case errors.As(err, &hostErr):
			return fmt.Sprintf("the server's TLS certificate is not valid for %s (%s): set the resource's hostname to the server's own name (<server>.postgres.database.azure.com); a private endpoint keeps that name, so do not use an IP address or another alias", x.r.Hostname, certNames(hostErr.Certificate))
		case errors.As(err, &authErr):
			return "the server's TLS certificate is signed by a CA the node does not trust: add that CA's PEM file to the node's ca_files (Azure's chains end at DigiCert Global Root G2 or Microsoft RSA Root Certificate Authority 2017)"
		case errors.As(err, &certErr):
			return "the server's TLS certificate did not verify (" + certErr.Err.Error() + "): check the node's clock and its ca_files"
		case timedOut:
			return fmt.Sprintf("%s accepted the TCP connection but did not answer the SSLRequest in time: check that it is the PostgreSQL server and not another service or a proxy that holds connections, and the server's load", hp)
		case strings.Contains(err.Error(), "refused TLS"):
			return "the server does not offer TLS: Azure Database for PostgreSQL always does, so check that host:port is the Azure server; the node never logs in without verified TLS (tls_required=false does not change that)"
		}
		return fmt.Sprintf("TLS with %s failed: check that host:port is an Azure Database for PostgreSQL server", hp)
	case api.StepToken:
		msg := err.Error()
		switch {
		case strings.Contains(msg, "Identity not found") && x.r.ManagedIdentityClientID != "":
			return fmt.Sprintf("the user-assigned identity %s is not assigned to this VM: assign it (VM → Identity → User assigned)", x.r.ManagedIdentityClientID)
		case strings.Contains(msg, "Identity not found"):
			return "this VM has no system-assigned identity: turn it on (VM → Identity → System assigned), or set the resource's managed-identity-client-id to a user-assigned identity of the VM"
		case timedOut || strings.Contains(msg, "connect") || strings.Contains(msg, "dial"):
			return "the node cannot reach IMDS (http://169.254.169.254): ferry-node must run on the Azure VM itself, with no proxy for 169.254.169.254 and no firewall rule blocking it"
		case strings.Contains(msg, "503") || strings.Contains(msg, "unavailable"):
			return "IMDS is temporarily unavailable (HTTP 503); the next check retries"
		}
		return "IMDS did not issue an access token: check the VM's managed identities (VM → Identity)"
	case api.StepLogin:
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "28000" {
			return x.loginHint(pgErr)
		}
		if errors.As(err, &pgErr) && pgErr.Code == "3D000" {
			return fmt.Sprintf("database %q does not exist on the server: fix the resource's database", x.r.Database)
		}
		if errors.As(err, &pgErr) {
			return fmt.Sprintf("the server refused the login (SQLSTATE %s): %s", pgErr.Code, pgErr.Hint)
		}
		if timedOut {
			return fmt.Sprintf("%s did not finish the login in time: check the server's load and state", hp)
		}
		return fmt.Sprintf("the login to %s failed before the server answered: check the network path to the server", hp)
	case api.StepQuery:
		if timedOut {
			return "the server accepted the login but did not answer SELECT 1 in time: check the server's load (CPU, connections) and state"
		}
		return "the server accepted the login but SELECT 1 failed: check the role's permissions and the server's state"
	}
	return ""
}

// loginHint explains a 28000 refusal of the access token.
func (x *run) loginHint(pgErr *pgconn.PgError) string {
	msg := pgErr.Message
	name := identityName(x.tok)
	user := x.r.LoginUsername()
	create := fmt.Sprintf("create the role: `select * from pgaadauth_create_principal('%s', false, false);` in the `postgres` database", name)
	switch {
	case uuidRE.MatchString(x.r.Username) && name != "" && !strings.EqualFold(x.r.Username, name):
		return fmt.Sprintf("the resource's username %s is an ID, but Azure names a managed identity's role after the identity's display name: set the resource's username to %q (if that role does not exist yet, %s)", x.r.Username, name, create)
	case expectedRole(pgErr) != "":
		return x.wrongRoleHint(expectedRole(pgErr))
	case strings.Contains(msg, "not mapped") || strings.Contains(msg, "does not exist") || strings.Contains(msg, "no role"):
		if name == "" {
			return "create the role for the managed identity with pgaadauth_create_principal in the `postgres` database"
		}
		if user != name {
			return create + ", then set the resource's username to " + fmt.Sprintf("%q", name)
		}
		return create
	case strings.Contains(msg, "access token") || strings.Contains(msg, "Entra ID access token"):
		return "the server refused the node's access token: " + msg + " Check the node's clock (the token is valid from its nbf to its exp), that the server's Microsoft Entra tenant is the identity's, and that Microsoft Entra authentication is enabled on the server"
	case strings.Contains(msg, "not valid for role") || strings.Contains(msg, "username@servername"):
		h := "the identity's token does not log in as role " + fmt.Sprintf("%q", user)
		if pgErr.Hint != "" {
			h += ": " + pgErr.Hint
		}
		return h + " Set the resource's username to the identity's role (on Single Server also set use-azure-single-server-usernames)"
	}
	return fmt.Sprintf("the server refused role %q with the token of the %s: check that the role exists and is mapped to that managed identity (pgaadauth_create_principal), and that Microsoft Entra authentication is enabled", user, x.identity())
}

// Azure names the role it expected when a token logs in as another one: "... is mapped to role
// "mi_user"." in the message, "Connect as "mi_user"." (or "mi_user@server" on Single Server) in the
// hint.
var (
	mappedToRE  = regexp.MustCompile(`mapped to role "([^"]+)"`)
	connectAsRE = regexp.MustCompile(`Connect as "([^"]+)"`)
)

// expectedRole returns the login name the server said it expected, or "".
func expectedRole(pgErr *pgconn.PgError) string {
	if m := connectAsRE.FindStringSubmatch(pgErr.Hint); m != nil {
		return m[1]
	}
	if m := mappedToRE.FindStringSubmatch(pgErr.Message); m != nil {
		return m[1]
	}
	return ""
}

// wrongRoleHint is the fix when the server named the login it expected: set the resource's
// username to it, saying when the resource used the other server kind's form (username@servername
// is Single Server's; a Flexible Server takes the role alone).
func (x *run) wrongRoleHint(want string) string {
	if x.secrets != nil {
		return "the server maps the identity to another role than the username read from the secret store: store that role's name in the secret the resource's username path names (the role is not shown here: it is the secret's value)"
	}
	role, server, single := strings.Cut(want, "@")
	if single {
		h := fmt.Sprintf("the server expects the identity's role as %s (the Single Server form, username@servername): set the resource's username to %s", want, role)
		if !x.r.UseAzureSingleServerUsernames {
			h += " and turn on use-azure-single-server-usernames (the node then appends @" + server + ")"
		}
		return h
	}
	h := fmt.Sprintf("the server expects the identity's role %s: set the resource's username to %s", role, role)
	switch {
	case x.r.UseAzureSingleServerUsernames:
		h += fmt.Sprintf(" and turn off use-azure-single-server-usernames: %s is the Single Server form (username@servername), and a Flexible Server takes the role name alone", x.r.LoginUsername())
	case strings.Contains(x.r.Username, "@"):
		h += fmt.Sprintf(": %s is the Single Server form (username@servername), and a Flexible Server takes the role name alone", x.r.Username)
	}
	return h
}

// identityName is the managed identity's display name, the last segment of the token's xms_mirid
// claim (its Azure resource ID: .../userAssignedIdentities/<name> or .../virtualMachines/<vm name>).
// pgaadauth_create_principal takes this name. The token is decoded, not verified: it came from IMDS.
func identityName(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		MIRID string `json:"xms_mirid"`
	}
	if json.Unmarshal(raw, &c) != nil || c.MIRID == "" {
		return ""
	}
	return c.MIRID[strings.LastIndex(c.MIRID, "/")+1:]
}

func certNames(c *x509.Certificate) string {
	if c == nil {
		return "no certificate"
	}
	names := c.DNSNames
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "it names " + c.Subject.CommonName
	}
	return "it names " + strings.Join(names, ", ")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
