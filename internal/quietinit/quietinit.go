// Package quietinit silences the standard logger while the desktop toolkit's packages initialize.
//
// Fyne's lang package parses the user's locale in its init function and logs an error for locales
// such as C.UTF-8 (common in containers and ssh sessions), so every CLI command would print three
// lines of noise. Imported first by package main, this package's init runs before Fyne's (Go
// initializes ready packages in import-path order, and Fyne's lang waits on golang.org/x/text);
// main calls Restore before doing anything else.
package quietinit

import (
	"io"
	"log"
	"os"
)

func init() { log.SetOutput(io.Discard) }

// Restore sends the standard logger to standard error again.
func Restore() { log.SetOutput(os.Stderr) }
