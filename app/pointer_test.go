package app_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// pointer moves the X server's pointer, as a user's mouse does: a minimal X11 client (connection
// setup and WarpPointer, core protocol) on the display's local socket, needing no tools.
type pointer struct {
	c    net.Conn
	root uint32
}

func openPointer(t *testing.T, display string) *pointer {
	t.Helper()
	n := strings.TrimPrefix(display, ":")
	c, err := net.DialTimeout("unix", "/tmp/.X11-unix/X"+n, 5*time.Second)
	if err != nil {
		t.Fatalf("connect to X display %s: %v", display, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Setup request: little-endian, protocol 11.0, no authorization.
	if _, err := c.Write([]byte{'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 8)
	if _, err := io.ReadFull(c, head); err != nil {
		t.Fatalf("X setup reply: %v", err)
	}
	body := make([]byte, 4*int(binary.LittleEndian.Uint16(head[6:])))
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatalf("X setup reply: %v", err)
	}
	if head[0] != 1 {
		t.Fatalf("X server refused the connection (status %d)", head[0])
	}
	vendorLen := int(binary.LittleEndian.Uint16(body[16:]))
	formats := int(body[21])
	screen := 32 + (vendorLen+3)/4*4 + 8*formats
	c.SetDeadline(time.Time{})
	return &pointer{c: c, root: binary.LittleEndian.Uint32(body[screen:])}
}

// warp moves the pointer to x, y of the root window.
func (p *pointer) warp(x, y int16) error {
	req := make([]byte, 24)
	req[0] = 41 // WarpPointer
	binary.LittleEndian.PutUint16(req[2:], 6)
	binary.LittleEndian.PutUint32(req[8:], p.root)
	binary.LittleEndian.PutUint16(req[20:], uint16(x))
	binary.LittleEndian.PutUint16(req[22:], uint16(y))
	if _, err := p.c.Write(req); err != nil {
		return fmt.Errorf("warp pointer: %w", err)
	}
	return nil
}

// sweep moves the pointer over a grid of the screen until stop is closed, so that it keeps entering
// and leaving the window's widgets (and the cursor keeps changing shape).
func (p *pointer) sweep(stop <-chan struct{}) {
	for {
		for y := int16(20); y < 800; y += 30 {
			for x := int16(20); x < 1280; x += 45 {
				select {
				case <-stop:
					return
				default:
				}
				if p.warp(x, y) != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
}
