// Command demo is Tarn's main job for a new user: it starts tarn on a
// temporary pool and drives one volume's whole life through the CSI API
// (create, stage, publish, write, snapshot while mounted, restore, verify,
// expand online, stats, tear down), printing each step and its time, and
// checks with the kernel that nothing is left behind.
//
// Run it as root on a machine with loop devices: make demo, or
//
//	go run ./test/demo --tarn bin/tarn
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	nodeID       = "demo-node"
	volumeName   = "demo-vol"
	restoreName  = "demo-restore"
	snapshotName = "demo-snap"
	// dataSize is written before the snapshot, laterSize after it.
	dataSize  = 64 * mib
	laterSize = 8 * mib
	// minVolumeSize leaves room for the data and the filesystem's own
	// metadata; mkfs.xfs refuses anything under 300 MiB.
	minVolumeSize = 128 * mib
	minXFSSize    = 300 * mib
	// maxSocketPath is sun_path's size less its terminating NUL.
	maxSocketPath = 107
)

type config struct {
	tarn string
	keep bool
	size int64
	// fs is "ext4" or "xfs" once preflight has resolved "auto".
	fs string
	// fsNote says why "auto" did not pick ext4, for the user.
	fsNote string
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	var size string
	fs.StringVar(&c.tarn, "tarn", "bin/tarn", "path of the tarn binary (make build)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (pool, tarn log) for inspection")
	fs.StringVar(&size, "size", "1Gi", "volume size (Mi, Gi...); it is expanded to twice this")
	fs.StringVar(&c.fs, "fs", "auto", "filesystem: ext4, xfs, or auto (ext4 unless this machine cannot grow it online)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var err error
	if c.size, err = parseSize(size); err != nil {
		return c, err
	}
	switch c.fs {
	case "auto", "ext4", "xfs":
	default:
		return c, fmt.Errorf("--fs %q: want ext4, xfs or auto", c.fs)
	}
	if c.size < minVolumeSize {
		return c, fmt.Errorf("--size %s is too small: the demo writes %s and needs at least %s",
			size, fmtBytes(dataSize+laterSize), fmtBytes(minVolumeSize))
	}
	if c.fs == "xfs" && c.size < minXFSSize {
		return c, fmt.Errorf("--size %s is too small for xfs, which needs at least %s", size, fmtBytes(minXFSSize))
	}
	return c, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	os.Exit(run(cfg, os.Stdout))
}

// preflight catches what would otherwise fail obscurely halfway.
func preflight(cfg *config) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root: tarn attaches loop devices and mounts filesystems")
	}
	abs, err := filepath.Abs(cfg.tarn)
	if err != nil {
		return err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("tarn binary: %w (build it with 'make build')", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("tarn binary %s is not an executable file", abs)
	}
	cfg.tarn = abs
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("loop devices are unavailable (%v): try 'modprobe loop'", err)
	}
	return pickFS(cfg)
}

// pickFS resolves --fs. The kernel refuses to grow a mounted ext4 (EPERM)
// without CAP_SYS_RESOURCE, which some containers drop even for root,
// while growing a mounted xfs needs only CAP_SYS_ADMIN, which mounting
// needs anyway.
func pickFS(cfg *config) error {
	resizable, err := hasCapability(unix.CAP_SYS_RESOURCE)
	if err != nil {
		return err
	}
	switch {
	case resizable && cfg.fs == "auto":
		cfg.fs = "ext4"
	case resizable:
	case cfg.fs == "ext4":
		return errors.New("this process lacks CAP_SYS_RESOURCE, without which the kernel refuses to grow a " +
			"mounted ext4 filesystem: run where root has it, or use --fs xfs")
	case cfg.fs == "auto":
		if cfg.size < minXFSSize {
			return fmt.Errorf("this process lacks CAP_SYS_RESOURCE, so ext4 cannot be grown online and the demo "+
				"would use xfs, which needs --size of at least %s", fmtBytes(minXFSSize))
		}
		cfg.fs = "xfs"
		cfg.fsNote = "this process lacks CAP_SYS_RESOURCE, without which the kernel refuses to grow a mounted ext4,\n" +
			"so the demo uses xfs, whose online growth needs only CAP_SYS_ADMIN"
	}
	return nil
}

// hasCapability reads the effective capability set of this process.
func hasCapability(capability int) (bool, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			set, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				return false, fmt.Errorf("parse %q: %w", line, err)
			}
			return set&(1<<capability) != 0, nil
		}
	}
	return false, errors.New("no CapEff line in /proc/self/status")
}

func run(cfg config, out io.Writer) int {
	if err := preflight(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first Ctrl-C the demo cleans up; a second one should
		// kill it as usual (tarn then gets SIGTERM as its parent dies).
		<-ctx.Done()
		stop()
	}()

	tmp, err := os.MkdirTemp("", "tarn-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	d := &demo{
		cfg:     cfg,
		tmp:     tmp,
		pool:    filepath.Join(tmp, "pool"),
		socket:  filepath.Join(tmp, "csi.sock"),
		logPath: filepath.Join(tmp, "tarn.log"),
	}
	if len(d.socket) > maxSocketPath {
		os.Remove(tmp)
		fmt.Fprintf(os.Stderr, "demo: socket path %s is longer than a unix socket allows: set TMPDIR to a shorter directory\n", d.socket)
		return 1
	}
	d.vol, d.restore = d.newVolume(volumeName), d.newVolume(restoreName)

	fmt.Fprintf(out, "Tarn demo: one volume's life through the CSI API\n")
	fmt.Fprintf(out, "  binary   %s\n  workdir  %s\n", cfg.tarn, tmp)
	if cfg.fsNote != "" {
		fmt.Fprintf(out, "  note     %s\n", strings.ReplaceAll(cfg.fsNote, "\n", "\n           "))
	}
	fmt.Fprintln(out)
	start := time.Now()
	steps := d.steps()
	err = runSteps(ctx, out, steps)
	total := time.Since(start)
	if err != nil {
		return d.fail(out, err, total)
	}
	d.summary(out, total, len(steps))
	return 0
}

func (d *demo) steps() []step {
	vol, restore := d.vol.name, d.restore.name
	return []step{
		{"Start tarn serve", d.startTarn},
		{"GetPluginInfo + Probe", d.pluginInfo},
		{"GetCapacity", d.capacity},
		{fmt.Sprintf("CreateVolume %s (%s, %s)", vol, fmtBytes(d.cfg.size), d.cfg.fs), func(ctx context.Context) (string, error) {
			return d.createVolume(ctx, d.vol, "")
		}},
		{"NodeStageVolume " + vol, func(ctx context.Context) (string, error) { return d.stage(ctx, d.vol) }},
		{"NodePublishVolume " + vol, func(ctx context.Context) (string, error) { return d.publish(ctx, d.vol) }},
		{fmt.Sprintf("Write %s of random data to %s", fmtBytes(dataSize), vol), d.writeData},
		{fmt.Sprintf("CreateSnapshot %s of %s while mounted", snapshotName, vol), d.snapshot},
		{fmt.Sprintf("Write %s more to %s after the snapshot", fmtBytes(laterSize), vol), d.writeLater},
		{fmt.Sprintf("CreateVolume %s from %s", restore, snapshotName), func(ctx context.Context) (string, error) {
			return d.createVolume(ctx, d.restore, d.snapID)
		}},
		{"NodeStageVolume + NodePublishVolume " + restore, func(ctx context.Context) (string, error) {
			return d.stageAndPublish(ctx, d.restore)
		}},
		{"Verify " + restore + " is point-in-time", d.verifyRestore},
		{fmt.Sprintf("ControllerExpandVolume %s to %s", vol, fmtBytes(d.expandedSize())), d.controllerExpand},
		{"NodeExpandVolume " + vol + " (online)", d.nodeExpand},
		{"NodeGetVolumeStats " + vol, d.volumeStats},
		{"NodeUnpublishVolume + NodeUnstageVolume, both", d.unpublishAndUnstage},
		{"DeleteVolume x2 + DeleteSnapshot", d.deleteAll},
		{"ListVolumes + ListSnapshots are empty", d.listEmpty},
		{"Stop tarn (SIGTERM)", d.stop},
		{"Nothing left behind", d.nothingLeft},
	}
}

func (d *demo) summary(out io.Writer, total time.Duration, steps int) {
	var snap string
	switch d.log.snapshotMethod {
	case "reflink":
		snap = "reflink (no data copied)"
	case "":
		snap = "unknown (not in the tarn log)"
	default:
		snap = "copy (" + d.log.snapshotMethod + ")"
	}
	if d.log.frozenFor != "" {
		snap += ", " + d.cfg.fs + " frozen for " + d.log.frozenFor
	}
	left := "nothing: no loop device, no mount, workdir removed"
	if d.cfg.keep {
		left = "no loop device, no mount; workdir kept at " + d.tmp
	}
	fmt.Fprintf(out, "\nSummary\n")
	fmt.Fprintf(out, "  total time       %s for %d steps\n", fmtDuration(total), steps)
	fmt.Fprintf(out, "  pool filesystem  %s, reflink %s\n", d.poolFS, orUnknown(d.log.reflink))
	fmt.Fprintf(out, "  snapshot         %s\n", snap)
	fmt.Fprintf(out, "  restore          %s of data identical, later writes absent\n", fmtBytes(dataSize))
	fmt.Fprintf(out, "  expansion        %s -> %s online, filesystem %s -> %s, data intact\n",
		fmtBytes(d.cfg.size), fmtBytes(d.expandedSize()), fmtBytes(d.fsBefore), fmtBytes(d.fsAfter))
	fmt.Fprintf(out, "  left behind      %s\n", left)
	fmt.Fprintf(out, "\nPASS\n")
}

// fail reports a failure and cleans up what it can; the workdir is kept
// because it holds tarn's log.
func (d *demo) fail(out io.Writer, err error, total time.Duration) int {
	fmt.Fprintf(out, "\nFAILED after %s: %v\n", fmtDuration(total), err)
	if d.undo.pending() > 0 {
		fmt.Fprintf(out, "\nCleaning up, newest first:\n")
		_ = d.undo.unwind(out) // each failure is printed as it happens
	}
	l, lerr := findLeftovers(d.tmp)
	switch {
	case lerr != nil:
		fmt.Fprintf(out, "\nCannot check for leftovers: %v\n", lerr)
	case !l.empty():
		fmt.Fprintf(out, "\nLeft behind:\n%s\nRemove by hand with:\n%s", l, l.hint())
	default:
		fmt.Fprintf(out, "\nNo loop device or mount is left under %s.\n", d.tmp)
	}
	if d.tarn != nil {
		fmt.Fprintf(out, "\nLast lines of the tarn log:\n")
		for _, line := range logTail(d.logPath, 20) {
			fmt.Fprintf(out, "  %s\n", line)
		}
		fmt.Fprintf(out, "\nFull tarn log: %s\n", d.logPath)
	}
	fmt.Fprintf(out, "Workdir kept for inspection: %s\n", d.tmp)
	fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
	return 1
}
