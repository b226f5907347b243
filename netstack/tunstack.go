package netstack

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// Sizes for a Stack on an OS TUN device (virtual networking mode). The TUN carries TCP between
// local applications and the stack on the same machine: no path MTU to respect and a round trip
// measured in microseconds, so buffers can be small and the MTU large.
const (
	// TUNMTU is the MTU of the OS TUN device and its stack, in bytes. 9000 ("jumbo") instead of
	// 1500 cuts per-packet work in the stack six-fold on bulk transfers (COPY, large result sets);
	// the device never leaves the machine, so nothing on a wire has to carry it.
	TUNMTU = 9000

	// TUNTCPBuffer is the initial per-connection TCP receive and send buffer of the TUN stack in
	// bytes (auto-tuning may grow it to MaxTCPBuffer). 256 KiB covers 1 Gbit/s at 2 ms: far more
	// than a local round trip needs, while a busy connection's data cannot pile up in memory.
	// Buffers are limits, not allocations (see BenchmarkTUNIdleConnMemory).
	TUNTCPBuffer = 256 << 10

	// tunOffset is the headroom left before each packet in the pump's buffers: wireguard-go's
	// Linux TUN with IFF_VNET_HDR writes a 10-byte virtio-net header in front of the packet.
	tunOffset = 16
)

// TUNStack is a Stack whose link layer is an OS TUN device: two goroutines copy packets between
// the device and the stack until Close.
type TUNStack struct {
	*Stack
	dev  tun.Device
	log  *slog.Logger
	wg   sync.WaitGroup
	once sync.Once
}

// NewTUNStack runs a new promiscuous Stack (cfg; zero MTU and buffers take TUNMTU and
// TUNTCPBuffer) on dev, which it owns from now on: Close closes it. The device should already
// have its address and route (see ConfigureTUN); the stack answers for every address routed to it.
func NewTUNStack(dev tun.Device, cfg Config, logger *slog.Logger) (*TUNStack, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if cfg.MTU == 0 {
		cfg.MTU = TUNMTU
		if m, err := dev.MTU(); err == nil && m >= 1280 && m < cfg.MTU {
			cfg.MTU = m
		}
	}
	if cfg.TCPReceiveBuffer == 0 {
		cfg.TCPReceiveBuffer = TUNTCPBuffer
	}
	if cfg.TCPSendBuffer == 0 {
		cfg.TCPSendBuffer = TUNTCPBuffer
	}
	cfg.Promiscuous = true
	s, err := New(cfg)
	if err != nil {
		return nil, fmt.Errorf("netstack: TUN stack: %w", err)
	}
	ts := &TUNStack{Stack: s, dev: dev, log: logger}
	ts.wg.Add(2)
	go ts.pump("tun->stack", dev, s.Device())
	go ts.pump("stack->tun", s.Device(), dev)
	return ts, nil
}

// pump copies packet batches from src to dst until either fails (on Close).
func (ts *TUNStack) pump(dir string, src, dst tun.Device) {
	defer ts.wg.Done()
	n := max(src.BatchSize(), dst.BatchSize(), 1)
	bufs := make([][]byte, n)
	for i := range bufs {
		// A Read from a TUN with offloads splits a coalesced packet into MTU-sized segments.
		bufs[i] = make([]byte, tunOffset+ts.cfg.MTU)
	}
	sizes := make([]int, n)
	out := make([][]byte, 0, n)
	for {
		// A TUN in offload mode may hand back up to its own batch size; ours is the larger one.
		k, err := src.Read(bufs[:max(src.BatchSize(), 1)], sizes, tunOffset)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) && ts.Stack.ctx.Err() == nil {
				ts.log.Warn("netstack: TUN pump stopped", "direction", dir, "err", err)
				go ts.Close()
			}
			return
		}
		out = out[:0]
		for i := 0; i < k; i++ {
			out = append(out, bufs[i][:tunOffset+sizes[i]])
		}
		if len(out) == 0 {
			continue
		}
		if _, err := dst.Write(out, tunOffset); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// One bad packet (e.g. not IP) must not stop the pump.
			ts.log.Debug("netstack: TUN pump write", "direction", dir, "err", err)
		}
	}
}

// Name returns the OS name of the TUN device.
func (ts *TUNStack) Name() string {
	n, _ := ts.dev.Name()
	return n
}

// Close stops the pumps, closes the OS device (the OS then removes the interface with its
// addresses and routes) and the stack.
func (ts *TUNStack) Close() error {
	var err error
	ts.once.Do(func() {
		err = ts.dev.Close()
		ts.Stack.Close()
		ts.wg.Wait()
	})
	return err
}

// TUNConfig is what ConfigureTUN sets on an OS TUN device.
type TUNConfig struct {
	Name   string       // interface name
	Addr   netip.Addr   // the interface's address (subnet+1 in virtual networking mode)
	Subnet netip.Prefix // routed to the interface
	MTU    int
}
