package tokensource

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// bypassCacheClaims is sent as the claims of every token request: MSAL's
// managed identity client reads no cached token when claims are given
// (managedidentity.AcquireToken, "ignore cached access tokens when given
// claims") and does not forward them to IMDS. The value is a claims
// challenge of the form Entra ID uses for token revocation.
const bypassCacheClaims = `{"access_token":{"nbf":{"essential":true,"value":"1"}}}`

// Refresh and fallback margins, as fractions of a token's lifetime with upper bounds.
const (
	refreshFraction = 2 // refresh once within lifetime/2 ...
	maxRefreshAhead = 5 * time.Minute
	usableFraction  = 20 // hand out until lifetime/20 ...
	maxUsableSkew   = 30 * time.Second
	minBackoff      = time.Second
	maxBackoff      = 15 * time.Second
)

// cached is a token with the times that govern its use.
type cached struct {
	token     string
	expiresOn time.Time
	refreshAt time.Time // from here on a refresh is started (in the background)
	usableTo  time.Time // handed out until here, also while refreshes fail
}

// flight is one IMDS fetch that callers for one identity share.
type flight struct {
	done chan struct{}
	tok  *cached // set on success
	err  error   // set on failure
}

// entry is the cache state of one identity; guarded by Source.mu.
type entry struct {
	tok       *cached
	call      *flight   // running fetch, if any
	notBefore time.Time // no fetch before this (backoff, Retry-After)
	failures  int       // consecutive failed fetches
	lastErr   error     // of the last failed fetch
	// label stands for the client ID in logs and errors once a caller named one (a client ID read
	// from a secret store is a secret value: only its path is shown).
	label string
}

type labelKey struct{}

// WithClientIDLabel returns a ctx under which Token's log lines and errors name the identity by
// label (such as "secret se-…/PATH") instead of its client ID: a client ID read from a secret
// store is a secret value. The label stays with the identity's cache entry, so the background
// refresh logs it too.
func WithClientIDLabel(ctx context.Context, label string) context.Context {
	if label == "" {
		return ctx
	}
	return context.WithValue(ctx, labelKey{}, label)
}

// idAttr is the log attribute naming e's identity; s.mu must be held.
func (e *entry) idAttr(clientID string) []any {
	if e.label != "" {
		return []any{"client_id_from", e.label}
	}
	return []any{"client_id", clientID}
}

// scrub replaces the client ID in text (IMDS's errors quote its request URL) with e's label;
// s.mu must be held.
func (e *entry) scrub(clientID, text string) string {
	if e.label == "" || clientID == "" {
		return text
	}
	return strings.ReplaceAll(text, clientID, e.label)
}

// newCached derives the refresh and usability times of a token obtained at now.
func newCached(token string, expiresOn, now time.Time) *cached {
	life := expiresOn.Sub(now)
	if life < 0 {
		life = 0
	}
	return &cached{
		token:     token,
		expiresOn: expiresOn,
		refreshAt: expiresOn.Add(-min(maxRefreshAhead, life/refreshFraction)),
		usableTo:  expiresOn.Add(-min(maxUsableSkew, life/usableFraction)),
	}
}

// Token returns an access token for the managed identity: system-assigned when
// clientID == "", else the user-assigned identity with that client ID, and the
// token's expiry. The token is a JWT for Scope, to be sent as the PostgreSQL
// password. A cached token is returned at once while it is usable (a refresh
// runs in the background once it is near expiry); otherwise the call waits
// for a fetch, shared with concurrent callers for the same identity. Each call
// is bounded by Config.Timeout and by ctx.
func (s *Source) Token(ctx context.Context, clientID string) (token string, expiresOn time.Time, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	label, _ := ctx.Value(labelKey{}).(string)
	for {
		s.mu.Lock()
		e := s.entries[clientID]
		if e == nil {
			e = &entry{}
			s.entries[clientID] = e
		}
		if label != "" {
			e.label = label
		}
		// This caller's errors name the identity as this caller knows it; the logs, shared by all
		// callers of the identity, by the label once any caller gave one.
		id := fmt.Sprintf("client ID %q", clientID)
		if label != "" {
			id = "client ID from " + label
		}
		now := s.now()
		c := e.tok
		if c != nil && now.Before(c.refreshAt) {
			s.mu.Unlock()
			return c.token, c.expiresOn, nil
		}
		if e.call == nil && !now.Before(e.notBefore) {
			e.call = s.startFetch(e, clientID)
		}
		call, notBefore, lastErr, failures := e.call, e.notBefore, e.lastErr, e.failures
		s.mu.Unlock()

		if c != nil && now.Before(c.usableTo) {
			// Refreshing (or backing off after a failed refresh): the cached token still serves.
			return c.token, c.expiresOn, nil
		}
		if call == nil {
			// No usable token, and IMDS may not be asked before notBefore.
			wait := notBefore.Sub(now)
			if dl, ok := ctx.Deadline(); ok && wait > time.Until(dl) {
				return "", time.Time{}, fmt.Errorf("get managed identity token (%s): IMDS may not be asked again for %v (after %d failed requests or its Retry-After), longer than this request may wait; last error: %w",
					id, wait.Round(time.Millisecond), failures, lastErr)
			}
			t := time.NewTimer(wait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				return "", time.Time{}, fmt.Errorf("get managed identity token (%s): %w (last error: %w)", id, ctx.Err(), lastErr)
			}
		}
		select {
		case <-call.done:
			if call.err != nil && retryAfter(call.err) > 0 {
				continue // IMDS said when to ask again: wait for it if the deadline allows
			}
			if call.err != nil {
				return "", time.Time{}, fmt.Errorf("get managed identity token (%s): %w", id, call.err)
			}
			return call.tok.token, call.tok.expiresOn, nil
		case <-ctx.Done():
			return "", time.Time{}, fmt.Errorf("get managed identity token (%s): %w", id, ctx.Err())
		}
	}
}

// startFetch starts the identity's shared fetch; s.mu is held. The fetch is
// not bound to any caller's ctx, only to Config.Timeout.
func (s *Source) startFetch(e *entry, clientID string) *flight {
	f := &flight{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		tok, err := s.fetch(context.Background(), clientID)
		now := s.now()
		s.mu.Lock()
		defer s.mu.Unlock()
		e.call = nil
		if err != nil {
			e.failures++
			e.lastErr = err
			backoff := min(maxBackoff, minBackoff<<min(e.failures-1, 4))
			ra := retryAfter(err)
			e.notBefore = now.Add(max(backoff, ra))
			f.err = err
			args := append(e.idAttr(clientID), "failures", e.failures, "next_attempt_in", max(backoff, ra), "err", e.scrub(clientID, err.Error()))
			if e.tok != nil && now.Before(e.tok.usableTo) {
				s.log.Warn("managed identity token refresh failed; the cached token is still used", append(args, "cached_expires_on", e.tok.expiresOn)...)
			} else {
				s.log.Warn("managed identity token request failed", args...)
			}
			return
		}
		e.failures, e.lastErr, e.notBefore = 0, nil, time.Time{}
		e.tok = newCached(tok.Token, tok.ExpiresOn, now)
		f.tok = e.tok
		s.log.Info("managed identity token", append(e.idAttr(clientID), "expires_on", tok.ExpiresOn, "expires_in", tok.ExpiresOn.Sub(now).Round(time.Second), "refresh_at", e.tok.refreshAt)...)
	}()
	return f
}

// Invalidate drops the cached token of clientID if it is token (which a
// server refused, e.g. as expired), so that the next Token fetches a new one.
// A token that has already been replaced is left alone, so many sessions
// refused with the same token cause one fetch.
func (s *Source) Invalidate(clientID, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[clientID]
	if e == nil || e.tok == nil || e.tok.token != token {
		return
	}
	s.log.Info("managed identity token dropped: the server refused it", append(e.idAttr(clientID), "expires_on", e.tok.expiresOn)...)
	e.tok = nil
	// A refusal is not an IMDS failure: ask at once (unless IMDS said to wait).
	if e.lastErr == nil {
		e.notBefore = time.Time{}
	}
}

// retryAfter is the wait an IMDS 429 (or 503) answer asked for in its
// Retry-After header (delay-seconds or an HTTP date, RFC 9110 §10.2.3); 0 if none.
func retryAfter(err error) time.Duration {
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) || afe.RawResponse == nil {
		return 0
	}
	v := afe.RawResponse.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}
