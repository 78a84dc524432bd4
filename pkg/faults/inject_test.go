//go:build faultinject

package faults

import "testing"

func TestKillerFiresOnceAtItsHit(t *testing.T) {
	name := Known()[0].Name
	env := map[string]string{EnvPoint: name, EnvHit: "3"}
	inj, err := FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	k := inj.(*killer)
	kills := 0
	k.kill = func() { kills++ }
	for range 2 {
		inj.Point(name)
		inj.Point(Known()[1].Name)
	}
	if kills != 0 {
		t.Fatalf("killed before the third arrival")
	}
	for range 3 {
		inj.Point(name)
	}
	if kills != 1 {
		t.Fatalf("%d kills, want exactly one at the third arrival", kills)
	}
}

func TestBadEnvironmentRefused(t *testing.T) {
	for _, env := range []map[string]string{
		{EnvPoint: "create-volume.nowhere"},
		{EnvPoint: Known()[0].Name, EnvHit: "0"},
		{EnvPoint: Known()[0].Name, EnvHit: "x"},
	} {
		if _, err := FromEnv(func(k string) string { return env[k] }); err == nil {
			t.Errorf("FromEnv(%v) succeeded", env)
		}
	}
}
