// Package integration exercises the Tarn driver end to end through its CSI
// gRPC API on a unix socket: real pools on loop devices, real loop-attached
// volumes, real filesystems and mounts. The tests need root.
//
// The driver runs in-process for most tests, as the sanity suite does, and
// as a separate `tarn serve` process where the test must kill it. TestMain
// fails the binary if any loop device or mount made by it is left behind.
package integration
