package driver

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
)

// captureKlog routes klog into a buffer at verbosity v for one test.
func captureKlog(t *testing.T, v int) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", strconv.Itoa(v))
	_ = fs.Set("logtostderr", "false")
	klog.SetOutput(&buf)
	t.Cleanup(func() {
		_ = fs.Set("v", "0")
		_ = fs.Set("logtostderr", "true")
		klog.SetOutput(os.Stderr)
	})
	return &buf
}

func TestCallLogNeverShowsSecrets(t *testing.T) {
	buf := captureKlog(t, 5)
	_, conn := startDriver(t, filepath.Join(t.TempDir(), "csi.sock"))
	_, _ = csi.NewControllerClient(conn).CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name:    "secret-test",
		Secrets: map[string]string{"password": "hunter2-do-not-log"},
	})
	klog.Flush()
	out := buf.String()
	if !strings.Contains(out, "CreateVolume") {
		t.Fatalf("the call was not logged: %q", out)
	}
	if strings.Contains(out, "hunter2-do-not-log") {
		t.Errorf("a secret reached the log: %q", out)
	}
}

// TestCallLogLevels pins which calls reach the log at which verbosity: one
// line per call with its request and its outcome.
func TestCallLogLevels(t *testing.T) {
	mountCap := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	tests := []struct {
		name      string
		verbosity int
		call      func(csi.ControllerClient, csi.IdentityClient)
		want      []string
		notWant   []string
	}{{
		name:      "failure logged with its request at the default verbosity",
		verbosity: 0,
		call: func(c csi.ControllerClient, _ csi.IdentityClient) {
			_, _ = c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "no-caps"})
		},
		want: []string{"CSI call failed", "InvalidArgument", "no-caps"},
	}, {
		name:      "success silent at the default verbosity",
		verbosity: 0,
		call: func(c csi.ControllerClient, _ csi.IdentityClient) {
			_, _ = c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "quiet-ok", VolumeCapabilities: mountCap})
		},
		notWant: []string{"quiet-ok"},
	}, {
		name:      "success logged with request and response at level 2",
		verbosity: 2,
		call: func(c csi.ControllerClient, _ csi.IdentityClient) {
			_, _ = c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "logged-ok", VolumeCapabilities: mountCap})
		},
		want:    []string{"CSI call succeeded", "logged-ok", "capacity_bytes"},
		notWant: []string{"CSI call started"},
	}, {
		name:      "frequent calls kept out of level 2",
		verbosity: 2,
		call: func(_ csi.ControllerClient, i csi.IdentityClient) {
			_, _ = i.Probe(context.Background(), &csi.ProbeRequest{})
		},
		notWant: []string{"Probe"},
	}, {
		name:      "frequent calls logged at level 5",
		verbosity: 5,
		call: func(_ csi.ControllerClient, i csi.IdentityClient) {
			_, _ = i.Probe(context.Background(), &csi.ProbeRequest{})
		},
		want: []string{"CSI call started", "CSI call succeeded", "Probe"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, conn := startDriver(t, filepath.Join(t.TempDir(), "csi.sock"))
			// Only the call under test: the dial's own calls come before.
			buf := captureKlog(t, tc.verbosity)
			tc.call(csi.NewControllerClient(conn), csi.NewIdentityClient(conn))
			klog.Flush()
			out := buf.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("log lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("log has %q:\n%s", w, out)
				}
			}
		})
	}
}
