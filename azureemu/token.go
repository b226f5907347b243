package azureemu

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// tokenClaims are the claims of an Entra ID v1.0 access token issued to a
// managed identity (app-only token). Source: Microsoft identity platform,
// "Access token claims reference".
type tokenClaims struct {
	jwt.RegisteredClaims
	// Aud shadows RegisteredClaims.Audience: Entra ID sends aud as a single
	// string, not an array.
	Aud      string `json:"aud"`
	AIO      string `json:"aio"`
	AppID    string `json:"appid"`
	AppIDACR string `json:"appidacr"`
	IDP      string `json:"idp"`
	IDTyp    string `json:"idtyp"`
	OID      string `json:"oid"`
	RH       string `json:"rh"`
	TID      string `json:"tid"`
	UTI      string `json:"uti"`
	Ver      string `json:"ver"`
	XMSAzRID string `json:"xms_az_rid,omitempty"`
	XMSMIRID string `json:"xms_mirid,omitempty"`
	XMSTCDT  int64  `json:"xms_tcdt"`
}

// IssueToken signs an access token for id with the emulator's key, as IMDS
// would, but with any audience and validity window: tests use it to provoke
// the front's refusals (wrong audience, expired, not yet valid).
func (e *Emulator) IssueToken(id Identity, audience string, notBefore, expires time.Time) (string, error) {
	now := time.Now()
	c := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    e.issuer,
			Subject:   id.ObjectID,
			IssuedAt:  jwt.NewNumericDate(notBefore),
			NotBefore: jwt.NewNumericDate(notBefore),
			ExpiresAt: jwt.NewNumericDate(expires),
		},
		Aud:      audience,
		AIO:      randomB64(64),
		AppID:    id.ClientID,
		AppIDACR: "2", // managed identities authenticate with a certificate
		IDP:      e.issuer,
		IDTyp:    "app",
		OID:      id.ObjectID,
		RH:       "0." + randomB64(90) + ".",
		TID:      e.cfg.TenantID,
		UTI:      randomB64(16),
		Ver:      "1.0",
		XMSTCDT:  now.Add(-3 * 365 * 24 * time.Hour).Unix(),
	}
	rg := "/subscriptions/" + e.cfg.TenantID + "/resourcegroups/ferry-rg/providers/"
	if id == e.System() {
		c.XMSMIRID = rg + "Microsoft.Compute/virtualMachines/" + id.DisplayName
	} else {
		c.XMSMIRID = rg + "Microsoft.ManagedIdentity/userAssignedIdentities/" + id.DisplayName
	}
	c.XMSAzRID = rg + "Microsoft.Compute/virtualMachines/" + e.System().DisplayName
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	t.Header["kid"] = e.keyID
	t.Header["x5t"] = e.keyID
	s, err := t.SignedString(e.key)
	if err != nil {
		return "", fmt.Errorf("issue token for %s: %w", id.ClientID, err)
	}
	return s, nil
}

// Why a token was refused; the front turns each into an Azure-like FATAL.
var (
	errTokenMalformed = errors.New("not a valid JWT access token")
	errTokenSignature = errors.New("access token signature is invalid")
	errTokenAudience  = errors.New("access token audience is not " + Resource)
	errTokenExpired   = errors.New("access token has expired")
	errTokenNotYet    = errors.New("access token is not yet valid")
	errTokenIssuer    = errors.New("access token was issued for another tenant")
)

// validateToken checks an access token the way the server does: RS256
// signature with the emulator's key, aud == Resource, nbf <= now < exp, and
// the issuer of the emulator's tenant. It returns the claims.
func (e *Emulator) validateToken(s string, now time.Time) (*tokenClaims, error) {
	return e.validateTokenFor(s, now, Resource)
}

// validateTokenFor is validateToken for another audience (the Key Vault's, VaultResource).
func (e *Emulator) validateTokenFor(s string, now time.Time, audience string) (*tokenClaims, error) {
	var c tokenClaims
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}),
		jwt.WithoutClaimsValidation(),
	)
	_, err := p.ParseWithClaims(s, &c, func(*jwt.Token) (any, error) { return &e.key.PublicKey, nil })
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return nil, errTokenSignature
	case err != nil:
		return nil, fmt.Errorf("%w: %v", errTokenMalformed, err)
	}
	switch {
	case strings.TrimSuffix(c.Aud, "/") != audience:
		if audience != Resource {
			return nil, fmt.Errorf("access token audience %q is not %s", c.Aud, audience)
		}
		return nil, errTokenAudience
	case c.ExpiresAt == nil || !now.Before(c.ExpiresAt.Time):
		return nil, errTokenExpired
	case c.NotBefore != nil && now.Before(c.NotBefore.Time):
		return nil, errTokenNotYet
	case c.Issuer != e.issuer || c.TID != e.cfg.TenantID:
		return nil, errTokenIssuer
	case c.OID == "":
		return nil, fmt.Errorf("%w: no oid claim", errTokenMalformed)
	}
	return &c, nil
}

// GetAudience implements jwt.Claims with the single-string aud.
func (c tokenClaims) GetAudience() (jwt.ClaimStrings, error) { return jwt.ClaimStrings{c.Aud}, nil }

// keyID is the base64url SHA-1 thumbprint of the public key, the form of
// Entra ID's kid/x5t header values.
func keyID(pub *rsa.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "azureemu"
	}
	sum := sha1.Sum(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func randomB64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}
