package main

import (
	"testing"

	"github.com/ferryhq/ferry/internal/helplint"
)

// TestHelpTexts walks every command's flags for the help-text mistakes helplint knows.
func TestHelpTexts(t *testing.T) {
	for _, d := range helplint.Defects(rootCmd()) {
		t.Error(d)
	}
}
