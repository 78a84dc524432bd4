package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/tarn-csi/tarn/pkg/driver"
)

// expansionFront runs 'tarn expansion-front': the socket csi-resizer talks
// to, so that PVC growth is left to the nodes that own the volumes.
func expansionFront(args []string) error {
	fs := flag.NewFlagSet("expansion-front", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket) for csi-resizer")
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	klogFlags.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	front := &driver.ExpansionFront{Endpoint: *endpoint, Version: version}
	return front.Run(ctx)
}
