// Package lvmfaults holds the tests that drive a real `tarn serve --backend
// lvm` through the CSI API in the VM: online growth of mounted ext4 and
// xfs on thin and thick LVs (TestOnlineGrowth), and crash safety: a real
// `tarn serve --backend lvm`, built with the faultinject tag, is SIGKILLed
// at each of its named fault points (package faults) and at random
// instants, restarted, and the call retried as the CSI sidecars would,
// against a real volume group with a thin pool and thick volumes.
//
// The tests need device-mapper, so they run in the project's VM (test/vm),
// which sets TARN_TEST_VG; without it they skip. The tarn binary is built on
// the host, where the Go toolchain is, and named by TARN_TEST_FAULT_BINARY
// (the VM shares the module directory, so a binary under it is reachable):
//
//	CGO_ENABLED=0 go build -trimpath -tags faultinject -o _output/tarn-faultinject ./cmd/tarn
//	TARN_TEST_FAULT_BINARY=$PWD/_output/tarn-faultinject CGO_ENABLED=0 \
//		go test -count=1 -exec "$PWD/test/vm/run.sh --" ./test/lvmfaults/
//
// By default the fault points of the LVM backend and kills inside thick
// copies run (4.5 to 5 minutes under TCG). TARN_LVM_NODE_POINTS=1 adds
// the node service's fault points, TARN_LVM_CRASH_ITERATIONS=n adds n
// random kills per operation and volume type, TARN_CRASH_SEED replays
// those, and TARN_LVMFAULTS_TRACE=1 logs where each run spent its time.
package lvmfaults
