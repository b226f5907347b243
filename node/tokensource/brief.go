package tokensource

import (
	"regexp"
	"strings"
)

// errorDescriptionRE finds the error_description of an IMDS (OAuth 2.0) error body.
var errorDescriptionRE = regexp.MustCompile(`"error_description"\s*:\s*"((?:[^"\\]|\\.)*)"`)

// Brief is the one short line of a token error for people: a psql FATAL, the audit record, a
// health check's error, doctor's output. azidentity's errors are a multi-line dump (the request,
// rulers, the response status and JSON body, a troubleshooting link); Brief keeps the first line
// (with whatever the callers prefixed), and adds IMDS's status and error_description, e.g.
//
//	get managed identity token (client ID "…"): ManagedIdentityCredential authentication failed.
//	the requested identity isn't assigned to this resource (IMDS: 400 Bad Request: Identity not found)
//
// The full text belongs in the node's log only. An error of one line is returned as it is.
func Brief(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	head, rest, multi := strings.Cut(s, "\n")
	if !multi {
		return s
	}
	head = strings.TrimSpace(head)
	var status, desc string
	for _, l := range strings.Split(rest, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "RESPONSE "):
			if _, st, ok := strings.Cut(l, ": "); ok {
				status = st
			}
		case errorDescriptionRE.MatchString(l):
			desc = errorDescriptionRE.FindStringSubmatch(l)[1]
		}
	}
	var detail []string
	if status != "" {
		detail = append(detail, status)
	}
	if desc != "" {
		detail = append(detail, desc)
	}
	if len(detail) > 0 {
		head += " (IMDS: " + strings.Join(detail, ": ") + ")"
	}
	return head
}
