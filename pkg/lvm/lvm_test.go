package lvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// lvsOutput is the shape of real "lvs --reportformat json --units b
// --nosuffix --binary" output of LVM 2.03.16 (Debian 12): a thin pool, an
// active thin volume, its inactive thin snapshot (activation skip set, device
// open unknown) and an active linear LV.
const lvsOutput = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pool", "vg_name":"vgtest", "lv_size":"268435456", "lv_attr":"twi-aotz--", "lv_tags":"", "segtype":"thin-pool", "pool_lv":"", "origin":"", "data_percent":"1.93", "metadata_percent":"11.13", "lv_active_locally":"1", "lv_device_open":"1", "lv_skip_activation":"0"},
                  {"lv_name":"snap1", "vg_name":"vgtest", "lv_size":"67108864", "lv_attr":"Vwi---tz-k", "lv_tags":"tarn.snap", "segtype":"thin", "pool_lv":"pool", "origin":"thin1", "data_percent":"", "metadata_percent":"", "lv_active_locally":"0", "lv_device_open":"-1", "lv_skip_activation":"1"},
                  {"lv_name":"thin1", "vg_name":"vgtest", "lv_size":"67108864", "lv_attr":"Vwi-aotz--", "lv_tags":"tarn.owner,tarn.x=1", "segtype":"thin", "pool_lv":"pool", "origin":"", "data_percent":"3.81", "metadata_percent":"", "lv_active_locally":"1", "lv_device_open":"1", "lv_skip_activation":"0"},
                  {"lv_name":"thick1", "vg_name":"vgtest", "lv_size":"16777216", "lv_attr":"-wi-a-----", "lv_tags":"tarn.name=abc-_,tarn.owner", "segtype":"linear", "pool_lv":"", "origin":"", "data_percent":"", "metadata_percent":"", "lv_active_locally":"1", "lv_device_open":"0", "lv_skip_activation":"0"}
              ]
          }
      ]
  }
`

const vgsOutput = `  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vgtest", "vg_size":"8585740288", "vg_free":"8023703552", "vg_extent_size":"4194304", "vg_extent_count":"2047", "vg_free_count":"1913"}
              ]
          }
      ]
  }
`

func TestParseLVs(t *testing.T) {
	lvs, err := ParseLVs([]byte(lvsOutput))
	if err != nil {
		t.Fatal(err)
	}
	want := []LV{
		{Name: "pool", VG: "vgtest", Size: 268435456, Attr: "twi-aotz--", Segtype: "thin-pool",
			DataPercent: 1.93, MetadataPercent: 11.13, UsageKnown: true, Active: true, DeviceOpen: true},
		{Name: "snap1", VG: "vgtest", Size: 67108864, Attr: "Vwi---tz-k", Tags: []string{"tarn.snap"},
			Segtype: "thin", Pool: "pool", Origin: "thin1", SkipActivation: true},
		{Name: "thin1", VG: "vgtest", Size: 67108864, Attr: "Vwi-aotz--", Tags: []string{"tarn.owner", "tarn.x=1"},
			Segtype: "thin", Pool: "pool", DataPercent: 3.81, UsageKnown: true, Active: true, DeviceOpen: true},
		{Name: "thick1", VG: "vgtest", Size: 16777216, Attr: "-wi-a-----", Tags: []string{"tarn.name=abc-_", "tarn.owner"},
			Segtype: "linear", Active: true},
	}
	if !reflect.DeepEqual(lvs, want) {
		t.Errorf("ParseLVs =\n%+v\nwant\n%+v", lvs, want)
	}
	if !lvs[0].IsThinPool() || !lvs[1].IsThin() || lvs[3].IsThin() {
		t.Errorf("segment type helpers disagree with segtype")
	}
	if lvs[0].AttrState() != 'a' || lvs[1].AttrState() != '-' || lvs[0].AttrHealth() != '-' {
		t.Errorf("attr helpers: state %c %c health %c", lvs[0].AttrState(), lvs[1].AttrState(), lvs[0].AttrHealth())
	}
	if !lvs[2].HasTag("tarn.x=1") || lvs[2].HasTag("tarn.x") {
		t.Errorf("HasTag matches prefixes or misses tags")
	}
}

func TestParseVGs(t *testing.T) {
	vgs, err := ParseVGs([]byte(vgsOutput))
	if err != nil {
		t.Fatal(err)
	}
	want := []VG{{Name: "vgtest", Size: 8585740288, Free: 8023703552, ExtentSize: 4194304, ExtentCount: 2047, FreeCount: 1913}}
	if !reflect.DeepEqual(vgs, want) {
		t.Errorf("ParseVGs = %+v, want %+v", vgs, want)
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	for name, data := range map[string]string{
		"not json":      "  Failed to find logical volume",
		"size unit":     `{"report":[{"lv":[{"lv_name":"a","lv_size":"4.00m"}]}]}`,
		"negative size": `{"report":[{"lv":[{"lv_name":"a","lv_size":"-4"}]}]}`,
		"word flag":     `{"report":[{"lv":[{"lv_name":"a","lv_size":"4","lv_active_locally":"active"}]}]}`,
		"percent":       `{"report":[{"lv":[{"lv_name":"a","lv_size":"4","data_percent":"101.00"}]}]}`,
	} {
		if _, err := ParseLVs([]byte(data)); err == nil {
			t.Errorf("%s: ParseLVs accepted %s", name, data)
		}
	}
	if _, err := ParseVGs([]byte(`{"report":[{"vg":[{"vg_name":"v","vg_size":"1","vg_free":"1","vg_extent_size":"0","vg_extent_count":"1","vg_free_count":"1"}]}]}`)); err == nil {
		t.Errorf("ParseVGs accepted a zero extent size")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		stderr string
		want   error
	}{
		{`  Volume group "vgtest" has insufficient free space (1913 extents): 25600 required.`, backend.ErrNoSpace},
		{`  Insufficient free space: 25596 extents needed, but only 1913 available`, backend.ErrNoSpace},
		{`  Insufficient suitable allocatable extents for logical volume lv: 10 more required`, backend.ErrNoSpace},
		{`  Cannot create new thin volume, free space in thin pool vgtest/pool reached threshold.`, backend.ErrNoSpace},
		{"  Volume group \"novg\" not found\n  Cannot process volume group novg", backend.ErrNotReady},
		{`  Failed to find logical volume "vgtest/nothere"`, backend.ErrNotFound},
		{`  Snapshot origin LV thin1 not found in Volume group vgtest.`, backend.ErrNotFound},
		{`  Logical Volume "thick1" already exists in volume group "vgtest"`, backend.ErrAlreadyExists},
		{`  Logical volume vgtest/thick1 in use.`, backend.ErrInUse},
		{`  Logical volume vgtest/clone1 contains a filesystem in use.`, backend.ErrInUse},
		{`  Can't remove open logical volume "lv1"`, backend.ErrInUse},
		{`  device-mapper: remove ioctl on  (253:3) failed: Device or resource busy`, backend.ErrInUse},
		// A frozen filesystem makes dm suspend fail on Linux 6.1; that is
		// not a volume in use and must stay unclassified.
		{"  device-mapper: suspend ioctl on  (253:4) failed: Device or resource busy\n" +
			"  Unable to suspend vgtest-clone1 (253:4)\n  Failed to suspend thin snapshot origin vgtest/clone1.", nil},
		// Warnings do not decide: the real failure is on the next line.
		{"  WARNING: Device for PV abc not found or rejected by a filter.\n" +
			"  Volume group \"vgtest\" has insufficient free space (1 extents): 2 required.", backend.ErrNoSpace},
		{"  WARNING: Device for PV abc not found or rejected by a filter.\n  Some other failure", nil},
		{`  New size (4 extents) matches existing size (4 extents).`, nil},
		{"", nil},
	} {
		if got := classify(tc.stderr); got != tc.want {
			t.Errorf("classify(%q) = %v, want %v", tc.stderr, got, tc.want)
		}
	}
}

func TestValidNameAndTag(t *testing.T) {
	for _, s := range []string{"vgtest", "vol-0123abcd", "a+b_c.d-e"} {
		if !ValidName(s) {
			t.Errorf("ValidName(%q) = false", s)
		}
	}
	for _, s := range []string{"", "-a", "a/b", "a b", ".", "..", "a,b", strings.Repeat("a", 128)} {
		if ValidName(s) {
			t.Errorf("ValidName(%q) = true", s)
		}
	}
	for _, s := range []string{"tarn.owner", "a=b/c!d:e&f#g+h.i-j_k", strings.Repeat("x", MaxTagLength)} {
		if !ValidTag(s) {
			t.Errorf("ValidTag(%q) = false", s)
		}
	}
	for _, s := range []string{"", "-bad", "bad tag", "a,b", "é", strings.Repeat("x", MaxTagLength+1)} {
		if ValidTag(s) {
			t.Errorf("ValidTag(%q) = true", s)
		}
	}
}

// fakeRunner answers commands from a script and records what was run.
type fakeRunner struct {
	calls   [][]string
	respond func(args []string) (Output, error)
}

func (f *fakeRunner) Run(ctx context.Context, args []string) (Output, error) {
	f.calls = append(f.calls, append([]string(nil), args...))
	if f.respond == nil {
		return Output{}, nil
	}
	return f.respond(args)
}

func TestClientArguments(t *testing.T) {
	ctx := context.Background()
	skip := true
	for _, tc := range []struct {
		name string
		call func(c *Client) error
		want []string
	}{
		{"thick", func(c *Client) error {
			return c.Create(ctx, CreateOptions{VG: "vg", Name: "vol-1", Size: 8 << 20, Tags: []string{"tarn.owner", "tarn.name=YWJj"}})
		}, []string{"lvcreate", "--yes", "--name", "vol-1", "--size", "8388608b", "--zero", "y", "--wipesignatures", "y",
			"--addtag", "tarn.owner", "--addtag", "tarn.name=YWJj", "vg"}},
		{"thin", func(c *Client) error {
			return c.Create(ctx, CreateOptions{VG: "vg", Name: "vol-1", Size: 8 << 20, ThinPool: "pool", Tags: []string{"t"}})
		}, []string{"lvcreate", "--yes", "--name", "vol-1", "--virtualsize", "8388608b", "--thinpool", "vg/pool",
			"--activate", "n", "--addtag", "t"}},
		{"snapshot", func(c *Client) error {
			return c.ThinSnapshot(ctx, ThinSnapshotOptions{VG: "vg", Name: "snap-1", Origin: "vol-1", SkipActivation: true, Tags: []string{"t"}})
		}, []string{"lvcreate", "--yes", "--snapshot", "--name", "snap-1", "--setactivationskip", "y", "--activate", "n",
			"--addtag", "t", "vg/vol-1"}},
		{"change", func(c *Client) error {
			return c.Change(ctx, "vg", "vol-1", ChangeOptions{AddTags: []string{"a", "b"}, DelTags: []string{"c"}, SkipActivation: &skip})
		}, []string{"lvchange", "--addtag", "a", "--addtag", "b", "--deltag", "c", "--setactivationskip", "y", "vg/vol-1"}},
		{"activate", func(c *Client) error { return c.Activate(ctx, "vg", "snap-1", true) },
			[]string{"lvchange", "--activate", "y", "--ignoreactivationskip", "vg/snap-1"}},
		{"extend", func(c *Client) error { return c.Extend(ctx, "vg", "vol-1", 12<<20) },
			[]string{"lvextend", "--size", "12582912b", "vg/vol-1"}},
		{"remove", func(c *Client) error { return c.Remove(ctx, "vg", "vol-1") },
			[]string{"lvremove", "--yes", "vg/vol-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeRunner{}
			if err := tc.call(NewClient(f, time.Minute)); err != nil {
				t.Fatal(err)
			}
			if len(f.calls) != 1 || !reflect.DeepEqual(f.calls[0], tc.want) {
				t.Errorf("ran %q\nwant %q", f.calls, tc.want)
			}
		})
	}
}

func TestClientRefusesUnsafeArguments(t *testing.T) {
	ctx := context.Background()
	f := &fakeRunner{}
	c := NewClient(f, time.Minute)
	for name, err := range map[string]error{
		"option as name": c.Remove(ctx, "vg", "--yes"),
		"path as name":   c.Remove(ctx, "vg", "../x"),
		"option as VG":   c.Create(ctx, CreateOptions{VG: "-an", Name: "x", Size: 1}),
		"bad tag":        c.Change(ctx, "vg", "x", ChangeOptions{AddTags: []string{"a b"}}),
		"tag as option":  c.Create(ctx, CreateOptions{VG: "vg", Name: "x", Size: 1, Tags: []string{"-an"}}),
		"zero size":      c.Create(ctx, CreateOptions{VG: "vg", Name: "x"}),
	} {
		if !errors.Is(err, backend.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	if len(f.calls) != 0 {
		t.Errorf("unsafe arguments reached LVM: %q", f.calls)
	}
}

func TestClientMapsFailures(t *testing.T) {
	ctx := context.Background()
	f := &fakeRunner{respond: func(args []string) (Output, error) {
		switch args[0] {
		case "lvs":
			return Output{ExitCode: 5, Stderr: []byte("  Failed to find logical volume \"vg/vol-1\"\n")}, nil
		case "vgs":
			return Output{ExitCode: 5, Stderr: []byte("  Volume group \"vg\" not found\n  Cannot process volume group vg\n")}, nil
		case "lvcreate":
			return Output{ExitCode: 5, Stderr: []byte("  Volume group \"vg\" has insufficient free space (1 extents): 2 required.\n")}, nil
		case "lvremove":
			return Output{ExitCode: 5, Stderr: []byte("  Logical volume vg/vol-1 in use.\n")}, nil
		}
		return Output{ExitCode: 5, Stderr: []byte("  Something odd\n")}, nil
	}}
	c := NewClient(f, time.Minute)
	if _, err := c.LV(ctx, "vg", "vol-1"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("LV: %v, want ErrNotFound", err)
	}
	if _, err := c.VG(ctx, "vg"); !errors.Is(err, backend.ErrNotReady) {
		t.Errorf("VG: %v, want ErrNotReady", err)
	}
	if err := c.Create(ctx, CreateOptions{VG: "vg", Name: "vol-1", Size: 1}); !errors.Is(err, backend.ErrNoSpace) {
		t.Errorf("Create: %v, want ErrNoSpace", err)
	}
	if err := c.Remove(ctx, "vg", "vol-1"); !errors.Is(err, backend.ErrInUse) {
		t.Errorf("Remove: %v, want ErrInUse", err)
	}
	err := c.Extend(ctx, "vg", "vol-1", 1)
	var lvmErr *Error
	if !errors.As(err, &lvmErr) || lvmErr.ExitCode != 5 || lvmErr.Stderr != "Something odd" || errors.Unwrap(err) != nil {
		t.Errorf("Extend: %#v, want an unclassified *Error", err)
	}
	if !strings.Contains(err.Error(), "lvextend --size 1b vg/vol-1") {
		t.Errorf("error %q does not say what ran", err)
	}
}

func TestClientEmptyReports(t *testing.T) {
	ctx := context.Background()
	f := &fakeRunner{respond: func(args []string) (Output, error) {
		return Output{Stdout: []byte(`{"report":[{"lv":[], "vg":[]}]}`)}, nil
	}}
	c := NewClient(f, time.Minute)
	if _, err := c.LV(ctx, "vg", "vol-1"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("LV with an empty report: %v, want ErrNotFound", err)
	}
	if _, err := c.VG(ctx, "vg"); !errors.Is(err, backend.ErrNotReady) {
		t.Errorf("VG with an empty report: %v, want ErrNotReady", err)
	}
}

func TestClientTimeout(t *testing.T) {
	blocking := runnerFunc(func(ctx context.Context, args []string) (Output, error) {
		<-ctx.Done()
		return Output{}, ctx.Err()
	})
	c := NewClient(blocking, 50*time.Millisecond)
	start := time.Now()
	_, err := c.LVs(context.Background(), "vg")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %v", d)
	}
}

type runnerFunc func(ctx context.Context, args []string) (Output, error)

func (f runnerFunc) Run(ctx context.Context, args []string) (Output, error) { return f(ctx, args) }

// The real Runner is exercised with a shell standing in for lvm: what
// matters is the argv, the environment, the captured streams and the exit
// status.
func TestExecRunner(t *testing.T) {
	ctx := context.Background()
	e := Exec{Path: "/bin/sh"}
	out, err := e.Run(ctx, []string{"-c", `echo "$LC_ALL $1"; echo oops >&2; exit 3`, "sh", "a b;c"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out.Stdout); got != "C a b;c\n" {
		t.Errorf("stdout = %q: arguments or environment not passed as is", got)
	}
	if string(out.Stderr) != "oops\n" || out.ExitCode != 3 {
		t.Errorf("stderr %q exit %d", out.Stderr, out.ExitCode)
	}
	if _, err := (Exec{Path: "/nonexistent/lvm"}).Run(ctx, []string{"lvs"}); !errors.Is(err, backend.ErrNotReady) {
		t.Errorf("missing binary: %v, want ErrNotReady", err)
	}
}

func TestExecRunnerTerminatesOnTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The shell exits on SIGTERM, as LVM does outside its critical
	// sections; a SIGKILL would give the same result but is not sent.
	_, err := (Exec{Path: "/bin/sh"}).Run(ctx, []string{"-c", "trap 'exit 143' TERM; while :; do sleep 0.05; done"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("interrupted command took %v to end", d)
	}
}

// An LVM command that does not end when told to (blocked in the kernel on
// a suspended device, or inside a section where it blocks signals) must
// not hold its caller, and with it the volume's lock, forever: after a
// grace it is left to end on its own, never killed, and the call fails.
func TestExecRunnerAbandonsACommandThatIgnoresSIGTERM(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := (Exec{Path: "/bin/sh", AbandonAfter: 300 * time.Millisecond}).Run(ctx,
			[]string{"-c", `echo $$ > "$1"; trap '' TERM; sleep 30 & while kill -0 $! 2>/dev/null; do wait $!; done`, "sh", pidFile})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "still running") {
			t.Errorf("err = %v, want DeadlineExceeded saying the command is still running", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run still waits for a command that ignores SIGTERM")
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("the abandoned command is gone (%v): it must be left to end by itself, not killed", err)
	}
}
