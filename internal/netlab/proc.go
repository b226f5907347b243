package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a started process whose standard output and error are kept (Output).
type Proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error // cmd.Wait's result, set before done is closed
}

// Start starts cmd (Stdout and Stderr must be unset: Proc keeps them) and waits for it in the
// background.
func Start(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("netlab: start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process ended (exec.Cmd.Wait's error); nil while it runs.
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Output is what the process has written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Pid is the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stop sends sig and waits up to limit for the process to exit, then kills it; the error says
// when it had to be killed. Stopping a process that has exited does nothing.
func (p *Proc) Stop(sig syscall.Signal, limit time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("netlab: %s did not stop within %v of %v; killed", p.cmd.Args[0], limit, sig)
	}
}

// Kill kills the process (SIGKILL, no chance to clean up) and waits until it is gone.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// WaitOutput waits until the output holds s, the process exits, or ctx ends.
func (p *Proc) WaitOutput(ctx context.Context, s string) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if strings.Contains(p.Output(), s) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.Output(), s) {
				return nil
			}
			return fmt.Errorf("netlab: %s exited (%v) before writing %q", p.cmd.Args[0], p.err, s)
		case <-ctx.Done():
			return fmt.Errorf("netlab: waiting for %q from %s: %w", s, p.cmd.Args[0], ctx.Err())
		case <-t.C:
		}
	}
}

// WaitDial waits until address accepts a TCP connection from inside h, the process exits, or ctx
// ends.
func (p *Proc) WaitDial(ctx context.Context, h *Host, address string) error {
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := h.DialContext(dctx, "tcp", address)
		cancel()
		if err == nil {
			return c.Close()
		}
		select {
		case <-p.done:
			return fmt.Errorf("netlab: %s exited (%v) before %s accepted connections", p.cmd.Args[0], p.err, address)
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("netlab: waiting for %s: %w", address, ctx.Err()), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a process's two output streams and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
