//go:build cgo || !darwin

package ui

import (
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// breakAfter are the characters after which a value may wrap: the joints of host names, addresses,
// URLs, user names and tag lists. A value also wraps after a space.
const breakAfter = ".-,/:@&?;_ "

// maxPieceWidth caps the minimum width a value asks for; a piece wider than this (a long hex string)
// wraps inside itself rather than widening the pane without end.
const maxPieceWidth = 260

// Value is a value in the details pane. It wraps a value too wide for its column only after one of
// the characters of breakAfter, so a DNS name or an address never breaks inside a label
// ("azure-pg-mi-prod.ferry.internal" becomes "azure-pg-mi-prod.ferry." and "internal", never
// "azure-pg-mi-prod.ferry.in" and "ternal"), and it asks for at least the width of its widest piece.
// Text is always the full value (what tests and copy actions read).
type Value struct {
	widget.BaseWidget
	Text string
}

// NewValue returns a Value showing text.
func NewValue(text string) *Value {
	v := &Value{Text: text}
	v.ExtendBaseWidget(v)
	return v
}

// SetText changes the value.
func (v *Value) SetText(text string) {
	v.Text = text
	v.Refresh()
}

// CreateRenderer draws the value with a plain label holding the wrapped lines.
func (v *Value) CreateRenderer() fyne.WidgetRenderer {
	r := &valueRenderer{v: v, label: widget.NewLabel("")}
	r.sync(v.Size().Width)
	return r
}

type valueRenderer struct {
	v     *Value
	label *widget.Label
}

// sync sets the label to the value's lines at width.
func (r *valueRenderer) sync(width float32) {
	text := strings.Join(wrapValue(r.v.Text, width-labelPadding(), measureText), "\n")
	if text != r.label.Text {
		r.label.SetText(text)
	}
}

func (r *valueRenderer) Layout(size fyne.Size) {
	r.sync(size.Width)
	r.label.Resize(size)
}

// MinSize is the widest piece's width and the height of the lines at the current width.
func (r *valueRenderer) MinSize() fyne.Size {
	r.sync(r.v.Size().Width)
	var w float32
	for _, p := range pieces(r.v.Text) {
		w = max(w, measureText(strings.TrimRight(p, " ")))
	}
	return fyne.NewSize(min(w, maxPieceWidth)+labelPadding(), r.label.MinSize().Height)
}

func (r *valueRenderer) Refresh() {
	r.sync(r.v.Size().Width)
	r.label.Refresh()
}

func (r *valueRenderer) Objects() []fyne.CanvasObject { return []fyne.CanvasObject{r.label} }
func (r *valueRenderer) Destroy()                     {}

// measureText is the width of s in the label font.
func measureText(s string) float32 {
	return fyne.MeasureText(s, theme.TextSize(), fyne.TextStyle{}).Width
}

// labelPadding is what a label adds around its text's width.
func labelPadding() float32 {
	return widget.NewLabel("M").MinSize().Width - measureText("M")
}

// pieces splits s after every character of breakAfter; the pieces joined are s.
func pieces(s string) []string {
	var out []string
	start := 0
	for i, c := range s {
		if strings.ContainsRune(breakAfter, c) {
			out = append(out, s[start:i+len(string(c))])
			start = i + len(string(c))
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// wrapValue breaks s into lines no wider than width (as measure says) after the characters of
// breakAfter, filling each line greedily. A piece wider than width alone is broken between runes, the
// only case of a break inside a piece. The lines joined are s. width <= 0 means unbounded.
func wrapValue(s string, width float32, measure func(string) float32) []string {
	if width <= 0 || measure(s) <= width {
		return []string{s}
	}
	var lines []string
	line := ""
	fits := func(t string) bool { return measure(strings.TrimRight(t, " ")) <= width }
	for _, p := range pieces(s) {
		if line != "" && fits(line+p) {
			line += p
			continue
		}
		if line != "" {
			lines = append(lines, line)
			line = ""
		}
		for !fits(p) { // a piece wider than a whole line: break it where it must
			rs := []rune(p)
			n := 1
			for n < len(rs) && fits(string(rs[:n+1])) {
				n++
			}
			lines = append(lines, string(rs[:n]))
			p = string(rs[n:])
		}
		line = p
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
