package cli

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/client"
)

// Table timestamps are local time with the zone, so that a reader in another zone (or a log
// pasted into a ticket) is not off by hours.
const (
	timeLayout       = "2006-01-02 15:04:05 MST"
	timeLayoutMillis = "2006-01-02 15:04:05.000 MST"
)

func stamp(t time.Time) string { return t.Local().Format(timeLayout) }

func stampMillis(t time.Time) string { return t.Local().Format(timeLayoutMillis) }

// notFound reports whether err says that the named thing does not exist: the node's 404, or the
// daemon's "no such resource".
func notFound(err error) bool {
	var se *api.StatusError
	if errors.As(err, &se) && se.Status == http.StatusNotFound {
		return true
	}
	return err != nil && strings.Contains(err.Error(), client.ErrUnknownResource.Error())
}

// missing gives every "there is no such thing" the same wording: `resource "x" does not exist`,
// with where to look, instead of the node's and the daemon's different phrasings.
func missing(kind, name string, err error) error {
	if !notFound(err) {
		return err
	}
	switch kind {
	case "resource":
		return fmt.Errorf("resource %q does not exist (`ferry admin datasources list` lists them)", name)
	case "user":
		return fmt.Errorf("user %q does not exist (`ferry admin users list` lists them)", name)
	}
	return fmt.Errorf("%s %q does not exist", kind, name)
}

// printable returns s with every character a terminal would act on written as a Go escape
// (\x1b, \u009b, \u202e, \r ...): text from the node, the daemon, a token or a user's SQL reaches
// the terminal, and an escape sequence there could clear it, retitle it or fake output. Newlines
// and tabs, which the CLI's own messages use, are kept.
func printable(s string) string { return escapeControls(s, true) }

// cell is printable for one cell of a table: newlines and tabs are escaped too, as they would
// break its rows and columns.
func cell(s string) string { return escapeControls(s, false) }

func escapeControls(s string, keepLines bool) string {
	kept := func(r rune) bool { return unicode.IsPrint(r) || keepLines && (r == '\n' || r == '\t') }
	if strings.IndexFunc(s, func(r rune) bool { return !kept(r) }) < 0 && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case kept(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}
