//go:build race

package pgproxy

// raceEnabled: the race detector is on. It changes allocation counts (and sync.Pool drops some
// of what it is given on purpose), so allocation budgets are not checked.
const raceEnabled = true
