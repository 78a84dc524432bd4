package faults

import (
	"strings"
	"testing"
)

func TestKnownNames(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range Known() {
		op, instant, ok := strings.Cut(p.Name, ".")
		if !ok || op == "" || instant == "" || strings.ContainsAny(p.Name, " \t=") {
			t.Errorf("point %q is not <operation>.<instant>", p.Name)
		}
		if seen[p.Name] {
			t.Errorf("point %q is listed twice", p.Name)
		}
		seen[p.Name] = true
		if p.Backends == 0 || p.Backends&^(Loop|LVM) != 0 {
			t.Errorf("point %q: backends %b", p.Name, p.Backends)
		}
		if !IsKnown(p.Name) {
			t.Errorf("IsKnown(%q) = false", p.Name)
		}
	}
	if IsKnown("create-volume.nowhere") {
		t.Error("IsKnown accepts an unlisted name")
	}
}

func TestUnsetEnvironmentIsNop(t *testing.T) {
	inj, err := FromEnv(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := inj.(Nop); !ok {
		t.Fatalf("FromEnv without %s = %T, want Nop", EnvPoint, inj)
	}
	inj.Point(Known()[0].Name)
}

func TestOrNop(t *testing.T) {
	if _, ok := OrNop(nil).(Nop); !ok {
		t.Error("OrNop(nil) is not Nop")
	}
}
