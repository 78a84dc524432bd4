package freeze

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/test/testpool"
	"golang.org/x/sys/unix"
)

// mountedPool makes a mounted pool and returns its mountpoint and device.
func mountedPool(t *testing.T, kind testpool.Kind) (mnt, dev string) {
	t.Helper()
	mnt = testpool.New(t, kind, poolSize)
	thawAtCleanup(t, mnt)
	return mnt, testpool.DeviceOf(t, mnt)
}

func TestWhileQuiescedFreezesDuringFn(t *testing.T) {
	for _, kind := range []testpool.Kind{testpool.Ext4, testpool.XFSReflink} {
		t.Run(string(kind), func(t *testing.T) {
			mnt, dev := mountedPool(t, kind)
			var write <-chan error
			res, err := WhileQuiesced(context.Background(), dev, generous, func() error {
				write = startWrite(mnt)
				assertBlocked(t, write)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Frozen || res.Mountpoint != mnt || res.FrozenFor < stillBlocked {
				t.Errorf("Result = %+v, want frozen at %s for at least %v", res, mnt, stillBlocked)
			}
			awaitWrite(t, write)
		})
	}
}

func TestWhileQuiescedThawsAfterFnError(t *testing.T) {
	mnt, dev := mountedPool(t, testpool.Ext4)
	boom := errors.New("boom")
	res, err := WhileQuiesced(context.Background(), dev, generous, func() error { return boom })
	if err != boom {
		t.Errorf("err = %v, want fn's error unchanged", err)
	}
	if !res.Frozen {
		t.Errorf("Result = %+v, want Frozen", res)
	}
	assertWritable(t, mnt)
}

func TestWhileQuiescedThawsAfterPanic(t *testing.T) {
	mnt, dev := mountedPool(t, testpool.Ext4)
	recovered := func() (r any) {
		defer func() { r = recover() }()
		_, _ = WhileQuiesced(context.Background(), dev, generous, func() error { panic("boom") })
		return nil
	}()
	if recovered != "boom" {
		t.Errorf("recovered %v, want the panic from fn", recovered)
	}
	assertWritable(t, mnt)
}

// In the timeout tests fn only returns once a write has gone through, which
// proves the watchdog thawed while fn was still running.
func TestWhileQuiescedThawsOnTimeout(t *testing.T) {
	mnt, dev := mountedPool(t, testpool.Ext4)
	const timeout = 200 * time.Millisecond
	fnErr := errors.New("snapshot incomplete")
	res, err := WhileQuiesced(context.Background(), dev, timeout, func() error {
		awaitWrite(t, startWrite(mnt))
		return fnErr
	})
	for _, want := range []error{ErrFreezeTimedOut, context.DeadlineExceeded, fnErr} {
		if !errors.Is(err, want) {
			t.Errorf("err = %v, want it to match %v", err, want)
		}
	}
	if !res.Frozen || res.FrozenFor < timeout || res.FrozenFor >= generous {
		t.Errorf("Result = %+v, want frozen for between %v and %v", res, timeout, generous)
	}
	assertWritable(t, mnt)
}

func TestWhileQuiescedThawsWhenContextCancelled(t *testing.T) {
	mnt, dev := mountedPool(t, testpool.XFSReflink)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := WhileQuiesced(ctx, dev, generous, func() error {
		cancel()
		awaitWrite(t, startWrite(mnt))
		return nil
	})
	if !errors.Is(err, ErrFreezeTimedOut) || !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want ErrFreezeTimedOut and context.Canceled", err)
	}
}

func TestWhileQuiescedLeavesSomeoneElsesFreezeAlone(t *testing.T) {
	mnt, dev := mountedPool(t, testpool.Ext4)
	if err := Freeze(mnt); err != nil {
		t.Fatal(err)
	}
	ran := false
	_, err := WhileQuiesced(context.Background(), dev, generous, func() error { ran = true; return nil })
	if !errors.Is(err, unix.EBUSY) || ran {
		t.Errorf("err = %v, fn ran = %v; want EBUSY and fn not run", err, ran)
	}
	write := startWrite(mnt)
	assertBlocked(t, write)
	if err := Thaw(mnt); err != nil {
		t.Fatal(err)
	}
	awaitWrite(t, write)
}

func TestWhileQuiescedFlushesUnmountedDevice(t *testing.T) {
	loop := testpool.NewLoop(t, 64<<20)
	backing, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file"))
	if err != nil {
		t.Fatal(err)
	}
	image := strings.TrimSpace(string(backing))

	// Written through the device's page cache and not synced; the writer
	// stays open, because the last close of a block device syncs it too.
	const off = 1 << 20
	pattern := bytes.Repeat([]byte("tarn"), 1024)
	w, err := os.OpenFile(loop, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt(pattern, off); err != nil {
		t.Fatal(err)
	}

	res, err := WhileQuiesced(context.Background(), loop, generous, func() error {
		img, err := os.Open(image)
		if err != nil {
			return err
		}
		defer img.Close()
		got := make([]byte, len(pattern))
		if _, err := img.ReadAt(got, off); err != nil {
			return err
		}
		if !bytes.Equal(got, pattern) {
			return fmt.Errorf("backing file lacks the data written through %s", loop)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{}) {
		t.Errorf("Result = %+v, want zero for a flushed device", res)
	}
}

func TestWhileQuiescedWithoutDevice(t *testing.T) {
	ran := false
	res, err := WhileQuiesced(context.Background(), "", time.Second, func() error { ran = true; return nil })
	if err != nil || !ran || res != (Result{}) {
		t.Errorf("WhileQuiesced(\"\") = %+v, %v, ran=%v; want zero result, nil, ran", res, err, ran)
	}
}

func TestWhileQuiescedRejectsBadInput(t *testing.T) {
	loop := testpool.NewLoop(t, 1<<20)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	notADevice := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		device  string
		timeout time.Duration
	}{
		{"zero timeout", context.Background(), loop, 0},
		{"cancelled context", cancelled, loop, time.Second},
		{"not a block device", context.Background(), notADevice, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			_, err := WhileQuiesced(tc.ctx, tc.device, tc.timeout, func() error { ran = true; return nil })
			if err == nil || ran {
				t.Errorf("err = %v, fn ran = %v; want an error and fn not run", err, ran)
			}
		})
	}
}
