package resource

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// SecretStoreTypeAzureKeyVault is the only secret store type: Azure Key Vault, read by the node
// with its managed identity.
const SecretStoreTypeAzureKeyVault = "azurekeyvault"

// SecretStoreNone is how the CLI and the app name the default: credentials in the catalog.
const SecretStoreNone = "none: credentials in the catalog"

// KeyVaultHostSuffixes are the DNS suffixes of Azure Key Vaults in Azure's clouds (public, China,
// US Government). A vault URI must name a host below one of them: the node sends the vault a
// managed-identity access token.
var KeyVaultHostSuffixes = []string{".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net"}

// SecretStore is a place the node reads a resource's username and client ID from.
type SecretStore struct {
	ID       string `json:"id,omitempty"` // "se-…", assigned by the catalog
	Name     string `json:"name"`
	Type     string `json:"type"`      // SecretStoreTypeAzureKeyVault
	VaultURI string `json:"vault_uri"` // https://NAME.vault.azure.net/
	// ManagedIdentityClientID is the node's user-assigned identity that reads the vault; empty means
	// the node VM's system-assigned identity.
	ManagedIdentityClientID string `json:"managed_identity_client_id,omitempty"`
}

var (
	vaultNameRE  = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$`)
	secretNameRE = regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)
	versionRE    = regexp.MustCompile(`^[0-9a-fA-F]{32}$`)
	fieldRE      = regexp.MustCompile(`^[^\x00-\x1f]{1,256}$`)
)

// Validate checks the store's properties and returns all failures joined (*FieldError), or nil.
func (s *SecretStore) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, &FieldError{Field: field, Message: fmt.Sprintf(format, a...)})
	}
	switch {
	case strings.TrimSpace(s.Name) == "":
		bad("name", "name is required")
	case strings.ContainsAny(s.Name, "\"<>/") || len(s.Name) > 255:
		bad("name", "name must be at most 255 characters without \", <, > or /")
	}
	if s.Type != SecretStoreTypeAzureKeyVault {
		bad("type", "unknown secret store type %q (supported: %s)", s.Type, SecretStoreTypeAzureKeyVault)
	}
	if _, err := NormalizeVaultURI(s.VaultURI); err != nil {
		bad("vault-uri", "%v", err)
	}
	if s.ManagedIdentityClientID != "" && !uuidRE.MatchString(s.ManagedIdentityClientID) {
		bad("managed-identity-client-id", "%q is not a client ID (a UUID); leave it empty for the node VM's system-assigned identity", s.ManagedIdentityClientID)
	}
	return errors.Join(errs...)
}

// NormalizeVaultURI checks a Key Vault URI (https://NAME.vault.azure.net/, or a sovereign cloud's
// suffix) and returns it as "https://name.vault.azure.net/".
func NormalizeVaultURI(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" ||
		(u.Path != "" && u.Path != "/") || u.Port() != "" {
		return "", fmt.Errorf("%q is not a Key Vault URI such as https://NAME.vault.azure.net/", s)
	}
	host := strings.ToLower(u.Hostname())
	for _, suf := range KeyVaultHostSuffixes {
		if name, ok := strings.CutSuffix(host, suf); ok {
			if !vaultNameRE.MatchString(name) || strings.Contains(name, "--") {
				return "", fmt.Errorf("%q: vault name %q must be 3-24 letters, digits and single dashes, starting with a letter", s, name)
			}
			return "https://" + host + "/", nil
		}
	}
	return "", fmt.Errorf("%q is not a Key Vault URI: the host must end in %s", s, strings.Join(KeyVaultHostSuffixes, ", "))
}

// SecretPath is a parsed secret path: "secret-name[/version][?key=field]".
type SecretPath struct {
	Name    string // Key Vault secret name
	Version string // "" = the current version
	Key     string // "" = the whole value; else the field of the JSON object the value holds
}

// ParseSecretPath parses "secret-name[/version][?key=field]". Secret names are Key Vault's: 1-127
// letters, digits and dashes; a version is 32 hex digits.
func ParseSecretPath(p string) (SecretPath, error) {
	path, query, hasQuery := strings.Cut(p, "?")
	name, version, hasVersion := strings.Cut(path, "/")
	var sp SecretPath
	if !secretNameRE.MatchString(name) {
		return sp, fmt.Errorf("%q is not a secret path: the secret name must be 1-127 letters, digits and dashes (secret-name[?key=field])", p)
	}
	sp.Name = name
	if hasVersion {
		if !versionRE.MatchString(version) {
			return sp, fmt.Errorf("%q is not a secret path: after the name, only a version of 32 hex digits may follow a /", p)
		}
		sp.Version = strings.ToLower(version)
	}
	if hasQuery {
		k, ok := strings.CutPrefix(query, "key=")
		if !ok || !fieldRE.MatchString(k) || strings.ContainsAny(k, "&=") {
			return sp, fmt.Errorf("%q is not a secret path: after ? only key=FIELD may follow (secret-name?key=field)", p)
		}
		sp.Key = k
	}
	return sp, nil
}

// String formats the path as ParseSecretPath reads it.
func (p SecretPath) String() string {
	s := p.Name
	if p.Version != "" {
		s += "/" + p.Version
	}
	if p.Key != "" {
		s += "?key=" + p.Key
	}
	return s
}

// serverNamedRoleRE finds the role names an Azure server quotes when a token logs in as another
// role than its principal's: "... is mapped to role "r"." and "Connect as "r"." (see node/health).
var serverNamedRoleRE = regexp.MustCompile(`(mapped to role|Connect as) "[^"]*"`)

// HiddenRole stands for a role name a server named in a message about a resource whose username
// comes from a secret store.
const HiddenRole = "(not shown: the role name belongs in the secret store)"

// HideServerNamedRoles replaces the role names a server's message quotes as the one it expected
// with HiddenRole. For a resource whose username is read from a secret store, that role is the
// value the secret should hold, as secret as the username the login sent.
func HideServerNamedRoles(s string) string {
	return serverNamedRoleRE.ReplaceAllString(s, `$1 `+HiddenRole)
}
