// Package reliability tests the Tarn driver the way production hurts it:
// many clients at once for a while (stress), thousands of malformed
// requests (which must never crash it, earn a code outside the CSI spec or
// write outside its pool), and SIGKILLs at random instants of real
// operations followed by a restart and the CO's retries (which must leave
// every object complete or absent, and nothing leaked), and SIGKILLs at
// each named fault point (package faults) of a binary built with the
// faultinject tag, followed by the same checks.
//
// The tests need root: they use real pools on loop devices, loop-attached
// volumes, filesystems and mounts. Their default budget keeps `go test`
// under about three minutes; TARN_STRESS_DURATION and
// TARN_CRASH_ITERATIONS (or the -stress.duration and -crash.iterations
// flags) run them longer, and TARN_FUZZ_SEED replays a malformed-request
// run.
package reliability
