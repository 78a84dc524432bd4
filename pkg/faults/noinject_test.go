//go:build !faultinject

package faults

import "testing"

// A production binary cannot be armed, whatever its environment says.
func TestArmedEnvironmentIgnoredWithoutTag(t *testing.T) {
	env := map[string]string{EnvPoint: Known()[0].Name, EnvHit: "1"}
	inj, err := FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := inj.(Nop); !ok || Enabled {
		t.Fatalf("FromEnv = %T (Enabled %v) without the faultinject tag, want Nop", inj, Enabled)
	}
}
