// Package assets bundles Ferry's icons into the binaries.
package assets

import _ "embed"

// IconPNG is the application icon (256×256 PNG).
//
//go:embed icon.png
var IconPNG []byte
