//go:build cgo || !darwin

package ui

import "fyne.io/fyne/v2"

// columns lays objects out side by side with widths in proportion to weights (one per object), all
// at the row's height.
type columns []float32

// rowWeights are the resource table's column widths: name, state, address, health, mode, button.
var rowWeights = columns{2.2, 1.6, 2.4, 1.1, 1.5, 1.4}

func (c columns) Layout(objs []fyne.CanvasObject, size fyne.Size) {
	var total float32
	for _, w := range c {
		total += w
	}
	x := float32(0)
	for i, o := range objs {
		if i >= len(c) {
			break
		}
		w := size.Width * c[i] / total
		o.Move(fyne.NewPos(x, 0))
		o.Resize(fyne.NewSize(w, size.Height))
		x += w
	}
}

func (c columns) MinSize(objs []fyne.CanvasObject) fyne.Size {
	var w, h float32
	for _, o := range objs {
		m := o.MinSize()
		w += m.Width
		h = max(h, m.Height)
	}
	return fyne.NewSize(w, h)
}
