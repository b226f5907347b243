package netstack

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// batchSize is the most packets one Read returns; it matches wireguard-go's
// conn.IdealBatchSize so a whole UDP batch can be filled from one call.
const batchSize = 128

// device is the tun.Device face of a Stack: Read takes the stack's outbound IP packets, Write
// injects inbound IP packets into it.
type device struct {
	s      *Stack
	events chan tun.Event
	closed atomic.Bool
	once   sync.Once

	// oversize counts outbound packets dropped because the caller's buffer was too small.
	oversize atomic.Uint64
}

var _ tun.Device = (*device)(nil)

func newDevice(s *Stack) *device {
	d := &device{s: s, events: make(chan tun.Event, 1)}
	d.events <- tun.EventUp
	return d
}

// File returns nil: there is no file descriptor behind a userspace stack.
func (d *device) File() *os.File { return nil }

// Name returns a fixed name for logs.
func (d *device) Name() (string, error) { return "netstack", nil }

// MTU returns the stack's IP MTU in bytes.
func (d *device) MTU() (int, error) { return d.s.cfg.MTU, nil }

// Events yields tun.EventUp once; it is closed by Close.
func (d *device) Events() <-chan tun.Event { return d.events }

// BatchSize is the preferred number of packets per Read/Write call.
func (d *device) BatchSize() int { return batchSize }

// Read blocks for at least one outbound IP packet, then fills further buffers with packets
// already queued, without waiting. Each packet is copied to bufs[i][offset:] and its length
// stored in sizes[i]. It returns os.ErrClosed once the stack is closed.
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	n := 0
	for n < len(bufs) {
		var pkt *stack.PacketBuffer
		if n == 0 {
			pkt = d.s.ep.ReadContext(d.s.ctx)
			if pkt == nil {
				return 0, os.ErrClosed
			}
		} else if pkt = d.s.ep.Read(); pkt == nil {
			break
		}
		size, ok := copyPacket(bufs[n][offset:], pkt)
		pkt.DecRef()
		if !ok {
			d.oversize.Add(1)
			continue
		}
		sizes[n] = size
		n++
	}
	return n, nil
}

// copyPacket copies pkt's bytes (headers and payload) to dst. It walks the packet's views in
// place: PacketBuffer.AsSlices would allocate a slice of them for every packet.
func copyPacket(dst []byte, pkt *stack.PacketBuffer) (int, bool) {
	size := pkt.Size()
	if size > len(dst) {
		return 0, false
	}
	vl, skip := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil && n < size; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		n += copy(dst[n:size], b[skip:])
		skip = 0
	}
	return n, n == size
}

// Write injects the IP packets bufs[i][offset:] into the stack, which processes them
// synchronously. Empty buffers are skipped; a packet that is neither IPv4 nor IPv6 fails the
// call with EAFNOSUPPORT after the packets before it were delivered.
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	if d.closed.Load() {
		return 0, os.ErrClosed
	}
	for i, b := range bufs {
		if len(b) <= offset {
			continue
		}
		packet := b[offset:]
		var proto = header.IPv4ProtocolNumber
		switch packet[0] >> 4 {
		case 4:
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			return i, syscall.EAFNOSUPPORT
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(packet)})
		d.s.ep.InjectInbound(proto, pkt)
		pkt.DecRef()
	}
	return len(bufs), nil
}

// Close closes the whole Stack.
func (d *device) Close() error { return d.s.Close() }

// close marks the device closed and closes the events channel; called by Stack.Close.
func (d *device) close() {
	d.once.Do(func() {
		d.closed.Store(true)
		close(d.events)
	})
}
