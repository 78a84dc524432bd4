//go:build faultinject

package faults

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Enabled says whether this binary can be armed.
const Enabled = true

// FromEnv returns the Injector the environment asks for: Nop when
// TARN_FAULT_POINT is unset, otherwise one that SIGKILLs this process the
// TARN_FAULT_HIT-th time (the first by default) that point is reached. An
// unknown point or a bad count is an error, so that a typo cannot make a
// test pass by never firing.
func FromEnv(getenv func(string) string) (Injector, error) {
	name := getenv(EnvPoint)
	if name == "" {
		return Nop{}, nil
	}
	if !IsKnown(name) {
		return nil, fmt.Errorf("%s=%q is not a fault point", EnvPoint, name)
	}
	hit := int64(1)
	if v := getenv(EnvHit); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s=%q: want a positive integer", EnvHit, v)
		}
		hit = n
	}
	klog.InfoS("Fault injection armed", "point", name, "hit", hit)
	return &killer{point: name, hit: hit, kill: killSelf}, nil
}

// killer kills the process at the hit-th arrival at point.
type killer struct {
	point string
	hit   int64
	seen  atomic.Int64
	kill  func()
}

func (k *killer) Point(name string) {
	if name != k.point || k.seen.Add(1) != k.hit {
		return
	}
	klog.InfoS("Fault point reached: killing the process with SIGKILL", "point", name, "hit", k.hit)
	klog.Flush()
	k.kill()
}

// killSelf ends the process as an OOM kill does: no deferred function,
// signal handler or cleanup runs. It does not return.
func killSelf() {
	_ = unix.Kill(os.Getpid(), unix.SIGKILL)
	for {
		time.Sleep(time.Hour)
	}
}
