package freeze

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ErrFreezeTimedOut means the filesystem was thawed before fn returned,
// because the timeout elapsed or ctx was cancelled; whatever fn captured may
// not be consistent.
var ErrFreezeTimedOut = errors.New("filesystem freeze timed out")

// Result says how a device was quiesced, for logs and metrics.
type Result struct {
	// Frozen is true when a filesystem was frozen, false when the device
	// was only flushed or there was no device.
	Frozen bool
	// Mountpoint is where the filesystem was frozen.
	Mountpoint string
	// FrozenFor is how long writers were blocked.
	FrozenFor time.Duration
}

// WhileQuiesced runs fn while the volume on devicePath is consistent on disk.
//
// If a filesystem on the device is mounted, it is frozen for the duration of
// fn and always thawed afterwards: when fn fails, when it panics (the panic
// goes on after the thaw), and, from a watchdog, as soon as timeout elapses or
// ctx is done while fn is still running. In the last case WhileQuiesced still
// waits for fn and returns its error, joined with one matching
// ErrFreezeTimedOut and the context's error. If freezing fails, fn does not
// run.
//
// If the device is not mounted (a raw block volume, or one not in use), its
// page cache is written back and dropped before fn runs.
//
// devicePath "" means the volume is not attached to this node: fn just runs.
func WhileQuiesced(ctx context.Context, devicePath string, timeout time.Duration, fn func() error) (Result, error) {
	if devicePath == "" {
		return Result{}, fn()
	}
	if timeout <= 0 {
		// An unbounded freeze can hang every writer on the node's pool.
		return Result{}, fmt.Errorf("quiescing %s: timeout must be positive, got %v", devicePath, timeout)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("quiescing %s: %w", devicePath, err)
	}
	mountpoint, err := MountpointOf(devicePath)
	if err != nil {
		return Result{}, fmt.Errorf("quiescing %s: %w", devicePath, err)
	}
	if mountpoint == "" {
		if err := flushDevice(devicePath); err != nil {
			return Result{}, fmt.Errorf("quiescing %s: %w", devicePath, err)
		}
		return Result{}, fn()
	}
	return whileFrozen(ctx, mountpoint, timeout, fn)
}

// watchdogReport is written by the watchdog goroutine before it exits and
// read only after that.
type watchdogReport struct {
	fired    bool
	cause    error
	thawedAt time.Time
	thawErr  error
}

func whileFrozen(ctx context.Context, mountpoint string, timeout time.Duration, fn func() error) (res Result, err error) {
	res.Mountpoint = mountpoint
	if err := Freeze(mountpoint); err != nil {
		return res, err
	}
	res.Frozen = true
	frozenAt := time.Now()
	klog.V(4).InfoS("Froze filesystem", "mountpoint", mountpoint, "timeout", timeout)

	wdCtx, cancel := context.WithTimeout(ctx, timeout)
	fnDone := make(chan struct{})
	wdExited := make(chan struct{})
	var report watchdogReport
	go func() {
		defer close(wdExited)
		select {
		case <-fnDone:
		case <-wdCtx.Done():
			select {
			case <-fnDone:
				// Both were ready; fn made it, so keep the freeze its
				// own.
				return
			default:
			}
			report.fired = true
			report.cause = wdCtx.Err()
			report.thawErr = Thaw(mountpoint)
			report.thawedAt = time.Now()
			klog.ErrorS(report.cause, "Thawed filesystem while the callback was still running",
				"mountpoint", mountpoint, "timeout", timeout, "thawError", report.thawErr)
		}
	}()

	// A deferred function, so that it also runs while a panic from fn
	// unwinds; the panic itself is left alone and continues afterwards.
	defer func() {
		close(fnDone)
		// Waiting for the watchdog before cancelling keeps our own
		// cancellation from looking like a timeout to it.
		<-wdExited
		cancel()

		thawedAt := report.thawedAt
		var thawErr error
		if !report.fired || report.thawErr != nil {
			thawErr = Thaw(mountpoint)
			thawedAt = time.Now()
		}
		res.FrozenFor = thawedAt.Sub(frozenAt)
		if thawErr != nil {
			thawErr = fmt.Errorf("filesystem at %s may still be frozen: %w", mountpoint, thawErr)
			klog.ErrorS(thawErr, "Thaw failed")
		} else {
			klog.V(4).InfoS("Thawed filesystem", "mountpoint", mountpoint, "frozenFor", res.FrozenFor)
		}
		var timeoutErr error
		if report.fired {
			timeoutErr = fmt.Errorf("%w: thawed %s after %v while the callback was still running: %w",
				ErrFreezeTimedOut, mountpoint, res.FrozenFor.Round(time.Millisecond), report.cause)
		}
		if timeoutErr != nil || thawErr != nil {
			err = errors.Join(err, timeoutErr, thawErr)
		}
	}()
	return res, fn()
}

// flushDevice writes back the device's dirty page cache and then drops it,
// so that a copy taken from below (the backing file or another reader)
// sees everything written through the device so far.
func flushDevice(devicePath string) error {
	// Read-only is enough for both fsync and BLKFLSBUF, and does not
	// conflict with anyone who holds the device open for writing.
	fd, err := unix.Open(devicePath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s to flush it: %w", devicePath, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync %s: %w", devicePath, err)
	}
	if err := unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("flushing buffers of %s: %w", devicePath, err)
	}
	return nil
}
