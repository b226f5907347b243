package tokensource

import (
	"regexp"
	"strconv"
	"strings"
	"unicode"
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
		return clean(s, maxBrief)
	}
	head = strings.TrimSpace(head)
	var status, desc string
	for _, l := range strings.Split(rest, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "RESPONSE "):
			if _, st, ok := strings.Cut(l, ": "); ok {
				status = clean(st, maxPart)
			}
		case errorDescriptionRE.MatchString(l):
			desc = clean(errorDescriptionRE.FindStringSubmatch(l)[1], maxPart)
		}
	}
	var detail []string
	if status != "" {
		detail = append(detail, status)
	}
	if desc != "" {
		detail = append(detail, desc)
	}
	head = clean(head, maxBrief)
	if len(detail) > 0 {
		head += " (IMDS: " + strings.Join(detail, ": ") + ")"
	}
	return head
}

// Limits of Brief, in characters: the whole first line, and each part taken from IMDS's answer.
const (
	maxBrief = 500
	maxPart  = 200
)

// clean makes s one printable line of at most max characters: what IMDS (or whatever answers at
// its address) sends reaches psql's FATAL and doctor's terminal, where a control character or an
// escape sequence would act. Each character that is not printable is written as its Go escape
// (\x1b, \r, \u202e), and a longer text is cut with "…".
func clean(s string, max int) string {
	var b strings.Builder
	n := 0
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if n == max {
			b.WriteString("…")
			break
		}
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		n++
	}
	return b.String()
}
