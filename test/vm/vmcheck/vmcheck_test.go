// Package vmcheck checks that test/vm/run.sh works as go test's -exec
// runner: the test binary boots in the VM, sees the volume group, the
// package directory as cwd and the passed-through environment, and its exit
// status reaches go test. On the host (no TARN_VM) every test skips.
//
//	go test -count=1 -v -exec "$PWD/test/vm/run.sh --" ./test/vm/vmcheck/
package vmcheck

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func inVM(t *testing.T) {
	t.Helper()
	if os.Getenv("TARN_VM") == "" {
		t.Skip("runs in the test VM only: go test -exec \"$PWD/test/vm/run.sh --\"")
	}
}

func TestGuestEnvironment(t *testing.T) {
	inVM(t)

	// cwd is the package directory, as go test sets it on the host.
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(wd, "vmcheck_test.go")); err != nil {
		t.Errorf("cwd %s is not the package directory: %v", wd, err)
	}

	// The guest kernel is Debian 12's, with device-mapper.
	rel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(rel), "6.1.") {
		t.Errorf("guest kernel %q, want Debian 12's 6.1", strings.TrimSpace(string(rel)))
	}
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		t.Errorf("no device-mapper: %v", err)
	}

	// TARN_* variables pass through (make vm-selftest sets this one).
	if want := os.Getenv("TARN_VMCHECK_EXPECT_TOKEN"); want != "" && os.Getenv("TARN_VMCHECK_TOKEN") != want {
		t.Errorf("TARN_VMCHECK_TOKEN=%q, want %q", os.Getenv("TARN_VMCHECK_TOKEN"), want)
	}

	// t.TempDir lives on the guest's tmpfs and is writable.
	if err := os.WriteFile(filepath.Join(t.TempDir(), "f"), []byte("x"), 0o600); err != nil {
		t.Error(err)
	}
}

func TestVolumeGroupReport(t *testing.T) {
	inVM(t)
	vg := os.Getenv("TARN_TEST_VG")
	if vg == "" {
		t.Skip("TARN_TEST_VG is empty: no volume group")
	}
	out, err := exec.Command("vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "vg_name,vg_size,pv_count", vg).Output()
	if err != nil {
		t.Fatalf("vgs: %v", err)
	}
	var report struct {
		Report []struct {
			VG []struct {
				Name    string `json:"vg_name"`
				Size    string `json:"vg_size"`
				PVCount string `json:"pv_count"`
			} `json:"vg"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	if len(report.Report) != 1 || len(report.Report[0].VG) != 1 || report.Report[0].VG[0].Name != vg {
		t.Fatalf("unexpected report: %s", out)
	}
	t.Logf("vg %s: %s bytes on %s PV(s)", vg, report.Report[0].VG[0].Size, report.Report[0].VG[0].PVCount)
}

// TestFailurePropagates fails on purpose when TARN_VMCHECK_FAIL=1, so that
// make vm-selftest can check that go test sees the failure.
func TestFailurePropagates(t *testing.T) {
	inVM(t)
	if os.Getenv("TARN_VMCHECK_FAIL") == "1" {
		t.Fatal("failing on purpose (TARN_VMCHECK_FAIL=1)")
	}
}
