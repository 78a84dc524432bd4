package main

import (
	"context"
	"os"
	"strings"
	"testing"
)

func TestParseServeFlags(t *testing.T) {
	hostname, err := os.Hostname()
	if err != nil || hostname == "" {
		t.Fatalf("os.Hostname() = %q, %v; the default node ID cannot be checked", hostname, err)
	}
	tests := []struct {
		name    string
		args    []string
		check   func(serveConfig) bool
		wantErr string
	}{
		{"defaults", nil, func(c serveConfig) bool {
			return c.endpoint == "unix:///run/tarn/csi.sock" && c.backendKind == "loop" && c.directIO && c.nodeID == hostname
		}, ""},
		{"lvm flags", []string{"--backend", "lvm", "--volume-group", "vg0", "--thin-pool", "p"}, func(c serveConfig) bool {
			return c.volumeGroup == "vg0" && c.thinPool == "p"
		}, ""},
		{"kubelet flags", []string{"--registration-dir", "/r", "--health-address", ":9808", "-v", "4"}, func(c serveConfig) bool {
			return c.registrationDir == "/r" && c.healthAddress == ":9808"
		}, ""},
		{"stray argument", []string{"extra"}, nil, "unexpected arguments"},
		{"unknown flag", []string{"--bogus"}, nil, "bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseServeFlags(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !tt.check(c) {
				t.Fatalf("parse(%v) = %+v, %v", tt.args, c, err)
			}
		})
	}
}

func TestOpenBackendRefusesBadChoices(t *testing.T) {
	for _, c := range []serveConfig{{backendKind: "zfs"}, {backendKind: "lvm"}} {
		if _, err := openBackend(context.Background(), c, nil, nil); err == nil {
			t.Errorf("openBackend(%+v) accepted", c)
		}
	}
}
