package azureemu

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestIMDSToken(t *testing.T) {
	t.Parallel()
	user := newIdentity("ferry-uami")
	e := startTestEmulator(t, Config{Users: []Identity{user}, TokenLifetime: 90 * time.Minute})
	sys := e.System()

	type want struct {
		status   int
		errDesc  string // for errors: error_description contains
		identity Identity
		aud      string
	}
	tests := []struct {
		name     string
		method   string
		metadata bool
		query    url.Values
		outage   bool
		want     want
	}{
		{"system-assigned", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}},
			false, want{status: 200, identity: sys, aud: Resource}},
		{"system-assigned, resource with trailing slash", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource + "/"}},
			false, want{status: 200, identity: sys, aud: Resource}},
		{"user-assigned by client_id", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}, "client_id": {user.ClientID}},
			false, want{status: 200, identity: user, aud: Resource}},
		{"user-assigned by client_id, upper case", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}, "client_id": {strings.ToUpper(user.ClientID)}},
			false, want{status: 200, identity: user, aud: Resource}},
		{"user-assigned by object_id", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}, "object_id": {user.ObjectID}},
			false, want{status: 200, identity: user, aud: Resource}},
		{"other resource", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {"https://management.azure.com/"}},
			false, want{status: 200, identity: sys, aud: "https://management.azure.com"}},
		{"no Metadata header", "GET", false, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}},
			false, want{status: 400, errDesc: "Required metadata header not specified"}},
		{"unknown client_id", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}, "client_id": {"00000000-0000-0000-0000-000000000001"}},
			false, want{status: 400, errDesc: "Identity not found"}},
		{"no resource", "GET", true, url.Values{"api-version": {"2018-02-01"}},
			false, want{status: 400, errDesc: "audience"}},
		{"no api-version", "GET", true, url.Values{"resource": {Resource}},
			false, want{status: 400, errDesc: "api-version"}},
		{"POST", "POST", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}},
			false, want{status: 405}},
		{"outage", "GET", true, url.Values{"api-version": {"2018-02-01"}, "resource": {Resource}},
			true, want{status: 503}},
	}
	t.Run("user-assigned identity added at runtime", func(t *testing.T) { testIMDSAddUserIdentityAtRuntime(t, e) })
	client := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.SetIMDSOutage(tc.outage)
			defer e.SetIMDSOutage(false)
			before := len(e.IMDSRequests())
			req, err := http.NewRequest(tc.method, e.IMDSEndpoint()+IMDSTokenPath+"?"+tc.query.Encode(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.metadata {
				req.Header.Set("Metadata", "true")
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want.status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tc.want.status, body)
			}
			reqs := e.IMDSRequests()
			if len(reqs) != before+1 {
				t.Fatalf("IMDSRequests grew by %d, want 1", len(reqs)-before)
			}
			last := reqs[len(reqs)-1]
			if last.Status != tc.want.status || last.ClientID != tc.query.Get("client_id") || last.Resource != tc.query.Get("resource") {
				t.Fatalf("recorded request %+v does not match", last)
			}
			if tc.want.status != 200 {
				if !strings.Contains(resp.Header.Get("Content-Type"), "application/json") {
					t.Fatalf("error Content-Type %q", resp.Header.Get("Content-Type"))
				}
				var ie imdsError
				if err := json.Unmarshal(body, &ie); err != nil || ie.Error == "" {
					t.Fatalf("error body %s is not IMDS-shaped: %v", body, err)
				}
				if !strings.Contains(ie.ErrorDescription, tc.want.errDesc) {
					t.Fatalf("error_description %q, want it to contain %q", ie.ErrorDescription, tc.want.errDesc)
				}
				return
			}
			// Every field is a JSON string, as Azure sends them.
			var raw map[string]any
			if err := json.Unmarshal(body, &raw); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in", "not_before", "resource", "token_type"} {
				if _, ok := raw[k].(string); !ok {
					t.Errorf("field %q = %#v, want a JSON string", k, raw[k])
				}
			}
			var tr imdsTokenResponse
			if err := json.Unmarshal(body, &tr); err != nil {
				t.Fatal(err)
			}
			if tr.TokenType != "Bearer" || tr.Resource != tc.query.Get("resource") || tr.ClientID != tc.want.identity.ClientID {
				t.Errorf("token_type %q resource %q client_id %q", tr.TokenType, tr.Resource, tr.ClientID)
			}
			if tr.ExpiresIn != "5400" {
				t.Errorf("expires_in %q, want 5400", tr.ExpiresIn)
			}
			expOn, _ := strconv.ParseInt(tr.ExpiresOn, 10, 64)
			nbf, _ := strconv.ParseInt(tr.NotBefore, 10, 64)
			if expOn-nbf != 5400 {
				t.Errorf("expires_on - not_before = %d, want 5400", expOn-nbf)
			}
			if len(tr.AccessToken) < 1000 {
				t.Errorf("access token is %d chars; Azure's are over 1000", len(tr.AccessToken))
			}
			var c tokenClaims
			tok, err := jwt.ParseWithClaims(tr.AccessToken, &c, func(*jwt.Token) (any, error) { return &e.key.PublicKey, nil },
				jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(tc.want.aud), jwt.WithIssuer("https://sts.windows.net/"+e.TenantID()+"/"))
			if err != nil || !tok.Valid {
				t.Fatalf("token does not verify: %v", err)
			}
			if c.OID != tc.want.identity.ObjectID || c.AppID != tc.want.identity.ClientID || c.TID != e.TenantID() {
				t.Errorf("claims oid %q appid %q tid %q, want identity %+v", c.OID, c.AppID, c.TID, tc.want.identity)
			}
			if c.ExpiresAt.Unix() != expOn || c.NotBefore.Unix() != nbf || c.IssuedAt == nil {
				t.Errorf("claims exp %v nbf %v differ from expires_on %d not_before %d", c.ExpiresAt, c.NotBefore, expOn, nbf)
			}
		})
	}
}

func testIMDSAddUserIdentityAtRuntime(t *testing.T, e *Emulator) {
	id := newIdentity("late")
	get := func() int {
		req, _ := http.NewRequest("GET", e.IMDSEndpoint()+IMDSTokenPath+"?api-version=2018-02-01&resource="+url.QueryEscape(Resource)+"&client_id="+id.ClientID, nil)
		req.Header.Set("Metadata", "true")
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get(); s != 400 {
		t.Fatalf("before AddUserIdentity: status %d, want 400", s)
	}
	e.AddUserIdentity(id)
	if s := get(); s != 200 {
		t.Fatalf("after AddUserIdentity: status %d, want 200", s)
	}
}
