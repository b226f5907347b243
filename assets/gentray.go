//go:build ignore

// gentray makes the tray icons (64×64 PNG) from icon.png: the same ferry on a disc coloured for the
// state. Run from assets/: go run gentray.go
package main

import (
	"image"
	"image/color"
	"image/png"
	"log"
	"os"
)

func main() {
	f, err := os.Open("icon.png")
	if err != nil {
		log.Fatal(err)
	}
	src, err := png.Decode(f)
	if err != nil {
		log.Fatal(err)
	}
	f.Close()
	states := map[string]color.NRGBA{
		"tray-idle.png":      {0x6b, 0x72, 0x80, 0xff}, // grey: nothing connected
		"tray-connected.png": {0x1b, 0x8a, 0x3a, 0xff}, // green: at least one resource connected
		"tray-problem.png":   {0xc6, 0x28, 0x28, 0xff}, // red: node unreachable or a resource unhealthy
	}
	const scale = 4
	b := src.Bounds()
	for name, disc := range states {
		dst := image.NewNRGBA(image.Rect(0, 0, b.Dx()/scale, b.Dy()/scale))
		for y := 0; y < dst.Bounds().Dy(); y++ {
			for x := 0; x < dst.Bounds().Dx(); x++ {
				var r, g, bl, a uint32
				for dy := 0; dy < scale; dy++ {
					for dx := 0; dx < scale; dx++ {
						c := color.NRGBAModel.Convert(src.At(b.Min.X+x*scale+dx, b.Min.Y+y*scale+dy)).(color.NRGBA)
						if c.A > 0 && int(c.B) > int(c.R)+40 { // the blue disc
							c.R, c.G, c.B = disc.R, disc.G, disc.B
						}
						// premultiply for averaging
						r += uint32(c.R) * uint32(c.A)
						g += uint32(c.G) * uint32(c.A)
						bl += uint32(c.B) * uint32(c.A)
						a += uint32(c.A)
					}
				}
				if a == 0 {
					continue
				}
				dst.SetNRGBA(x, y, color.NRGBA{uint8(r / a), uint8(g / a), uint8(bl / a), uint8(a / (scale * scale))})
			}
		}
		out, err := os.Create(name)
		if err != nil {
			log.Fatal(err)
		}
		if err := png.Encode(out, dst); err != nil {
			log.Fatal(err)
		}
		out.Close()
	}
}
