package tokensource

import (
	"context"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// VaultScope is the OAuth 2.0 scope of Azure Key Vault's data plane.
const VaultScope = "https://vault.azure.net/.default"

// Credential returns an azcore.TokenCredential for the managed identity with clientID ("" = the
// system-assigned identity), for Azure SDK clients such as Key Vault's (azsecrets), which ask for
// their own scope. Its requests take the same path as Token's: IMDS (or the configured stand-in)
// without a proxy, the same bounded retries, and each GetToken bounded by Config.Timeout. MSAL's
// process-wide cache is bypassed as for Token (see the package doc); the SDK client's bearer
// policy caches the token it gets. Tokens are never logged.
func (s *Source) Credential(clientID string) azcore.TokenCredential {
	return &credential{s: s, clientID: clientID}
}

type credential struct {
	s        *Source
	clientID string
}

// GetToken implements azcore.TokenCredential.
func (c *credential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return c.s.getToken(ctx, c.clientID, opts)
}
