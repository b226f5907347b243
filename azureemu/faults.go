package azureemu

import (
	"encoding/base64"
	"fmt"
	"strings"
	"time"
)

// TokenFault makes IMDS hand out access tokens that the PostgreSQL front refuses, for tests of how
// the node reports them. IMDS still answers 200 with the usual expires_in, so token caches keep them.
type TokenFault int

const (
	// TokenValid issues good tokens (the default).
	TokenValid TokenFault = iota
	// TokenExpired issues tokens whose exp (and nbf/iat) lie an hour in the past, as a server whose
	// clock runs ahead sees them.
	TokenExpired
	// TokenBadSignature issues tokens whose RS256 signature does not verify.
	TokenBadSignature
)

// SetTokenFault sets what kind of token IMDS issues from now on.
func (e *Emulator) SetTokenFault(f TokenFault) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.tokenFault = f
}

// issueForIMDS issues the token IMDS hands out for id, spoiled as SetTokenFault asks.
func (e *Emulator) issueForIMDS(id Identity, audience string, now, exp time.Time) (string, error) {
	e.mu.Lock()
	fault := e.tokenFault
	e.mu.Unlock()
	switch fault {
	case TokenExpired:
		return e.IssueToken(id, audience, now.Add(-2*time.Hour), now.Add(-time.Hour))
	case TokenBadSignature:
		tok, err := e.IssueToken(id, audience, now, exp)
		if err != nil {
			return "", err
		}
		i := strings.LastIndexByte(tok, '.')
		sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
		if err != nil || len(sig) == 0 {
			return "", fmt.Errorf("spoil token signature: %w", err)
		}
		sig[0] ^= 0xff
		return tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig), nil
	}
	return e.IssueToken(id, audience, now, exp)
}
