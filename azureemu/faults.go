package azureemu

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
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

// IMDSFault makes the IMDS token endpoint fail: while Status is non-zero, every token request is
// answered with that HTTP status and an IMDS-style error body, with a Retry-After header of
// RetryAfter (whole seconds, rounded up) when it is positive. IMDS answers 429 when a VM sends more
// than its request limit (about 20 requests per second) and 500 or 503 during transient failures;
// source: "Azure Instance Metadata Service: managed identity errors and retry guidance"
// (Microsoft Learn).
type IMDSFault struct {
	Status     int
	RetryAfter time.Duration
}

// SetIMDSFault sets how IMDS fails from now on; the zero IMDSFault ends the fault.
func (e *Emulator) SetIMDSFault(f IMDSFault) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.imdsFault = f
}

// imdsFaultAnswer writes the configured fault's answer and returns its status, or returns 0.
func (e *Emulator) imdsFaultAnswer(w http.ResponseWriter) int {
	e.mu.Lock()
	f := e.imdsFault
	e.mu.Unlock()
	if f.Status == 0 {
		return 0
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((f.RetryAfter+time.Second-1)/time.Second), 10))
	}
	code := "unknown_error"
	desc := "An unexpected error occurred while fetching the access token. Retry the request."
	if f.Status == http.StatusTooManyRequests {
		code, desc = "too_many_requests", "Too many requests to the Instance Metadata Service. Retry after the interval given in Retry-After."
	}
	return writeIMDSError(w, f.Status, code, desc)
}

// RevokeIssuedTokens makes the PostgreSQL front refuse every access token IMDS has handed out so
// far with the "access token has expired" FATAL (28000), although they are still within their
// lifetime: as a server whose clock runs ahead, or a revocation, would. Tokens issued afterwards
// are accepted.
func (e *Emulator) RevokeIssuedTokens() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, t := range e.issued {
		e.revoked[t] = true
	}
}

func (e *Emulator) isRevoked(token string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.revoked[token]
}

// StopPostgres stops the real PostgreSQL server with a fast shutdown: its sessions end with FATAL
// 57P01 ("terminating connection due to administrator command"), and until StartPostgres the front
// answers logins with FATAL 08006.
func (e *Emulator) StopPostgres() error {
	return e.pg.Stop()
}

// StartPostgres starts the real PostgreSQL server again on its data dir after StopPostgres and
// waits until it accepts connections.
func (e *Emulator) StartPostgres(ctx context.Context) error {
	return e.pg.Start(ctx)
}
