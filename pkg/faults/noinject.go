//go:build !faultinject

package faults

import "k8s.io/klog/v2"

// Enabled says whether this binary can be armed.
const Enabled = false

// FromEnv returns Nop: without the faultinject build tag no point can
// fire. A TARN_FAULT_POINT in the environment is logged as ignored, so that
// nobody believes a production binary is being fault-tested.
func FromEnv(getenv func(string) string) (Injector, error) {
	if name := getenv(EnvPoint); name != "" {
		klog.InfoS("Ignoring fault injection: this binary was built without the faultinject tag", "env", EnvPoint, "point", name)
	}
	return Nop{}, nil
}
