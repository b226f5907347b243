//go:build cgo || !darwin

package ui

import "fyne.io/fyne/v2"

// columns lays objects out side by side, all at the row's height, with widths in proportion to
// weights (one per object) but never below a column's floor: the widest content of that column in
// any row, as fit measured it, so that the header and every row line up and an address is never cut.
// One *columns is shared by the header and all rows.
type columns struct {
	weights []float32
	floors  []float32
}

func newColumns(weights ...float32) *columns {
	return &columns{weights: weights, floors: make([]float32, len(weights))}
}

// widths shares width among the columns: in proportion to their weights, then each column whose share
// is below its floor gets its floor and the others share what is left, until every share is at least
// its floor (or only floors are left, when the row is narrower than its content).
func (c *columns) widths(width float32) []float32 {
	out := make([]float32, len(c.weights))
	fixed := make([]bool, len(c.weights))
	for {
		left, weight := width, float32(0)
		for i, w := range c.weights {
			if fixed[i] {
				left -= out[i]
			} else {
				weight += w
			}
		}
		changed := false
		for i, w := range c.weights {
			if fixed[i] {
				continue
			}
			out[i] = 0
			if weight > 0 && left > 0 {
				out[i] = left * w / weight
			}
			if out[i] < c.floors[i] {
				out[i], fixed[i], changed = c.floors[i], true, true
			}
		}
		if !changed {
			return out
		}
	}
}

func (c *columns) Layout(objs []fyne.CanvasObject, size fyne.Size) {
	x := float32(0)
	for i, w := range c.widths(size.Width) {
		if i >= len(objs) {
			break
		}
		objs[i].Move(fyne.NewPos(x, 0))
		objs[i].Resize(fyne.NewSize(w, size.Height))
		x += w
	}
}

func (c *columns) MinSize(objs []fyne.CanvasObject) fyne.Size {
	var w, h float32
	for i, o := range objs {
		m := o.MinSize()
		if i < len(c.floors) {
			m.Width = max(m.Width, c.floors[i])
		}
		w += m.Width
		h = max(h, m.Height)
	}
	return fyne.NewSize(w, h)
}

// fit sets each column's floor to the widest minimum width of its objects in rows (labels in the
// table do not truncate, so that is their whole text). It reports whether a floor changed.
func (c *columns) fit(rows [][]fyne.CanvasObject) bool {
	floors := make([]float32, len(c.weights))
	for _, row := range rows {
		for i, o := range row {
			if i >= len(floors) || !o.Visible() {
				continue
			}
			floors[i] = max(floors[i], o.MinSize().Width)
		}
	}
	changed := false
	for i := range floors {
		if floors[i] != c.floors[i] {
			c.floors[i], changed = floors[i], true
		}
	}
	return changed
}
