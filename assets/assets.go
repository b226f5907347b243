// Package assets bundles Ferry's icons into the binaries: the application icon and the tray icon in
// its three states. tray-*.png are made from icon.png by gentray.go (go run gentray.go).
package assets

import _ "embed"

// IconPNG is the application icon (256×256 PNG).
//
//go:embed icon.png
var IconPNG []byte

// Tray icons (64×64 PNG): the ferry on a grey disc (idle: nothing connected), a green disc (at least
// one resource connected) and a red disc (problem: node unreachable or a resource unhealthy).
var (
	//go:embed tray-idle.png
	TrayIdlePNG []byte
	//go:embed tray-connected.png
	TrayConnectedPNG []byte
	//go:embed tray-problem.png
	TrayProblemPNG []byte
)
