package netlab

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has entered the host's network namespace, and returns its error.
// Sockets fn makes (listeners, connections) belong to the host and keep working from any
// goroutine afterwards; goroutines fn starts do not run in the namespace, but processes it starts
// do. Afterwards the thread goes back to the namespace it came from; if it cannot, it is never
// handed back and ends with fn's goroutine. (Processes that fn started with Pdeathsig die when
// their parent thread ends: they survive Do only because the thread goes back.)
func (h *Host) Do(fn func() error) error {
	if h.here() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: enter %s: this thread's namespace: %w", h.NS, err)
			return
		}
		defer unix.Close(orig)
		if err := enter("/run/netns/" + h.NS); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: enter %s: %w", h.NS, err)
			return
		}
		err = fn()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread() // back where it was: the thread may serve others
		} // else stays locked: the runtime ends the thread with this goroutine
		errc <- err
	}()
	return <-errc
}

// enter moves the calling thread into the network namespace at path.
func enter(path string) error {
	f, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(f)
	return unix.Setns(f, unix.CLONE_NEWNET)
}

// processAlive reports whether a process with this ID exists (signal 0).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
