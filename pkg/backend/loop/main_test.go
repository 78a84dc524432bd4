package loop

import (
	"os"
	"testing"

	"github.com/tarn-csi/tarn/test/testpool"
)

// Some tests use real loop devices and mounts; none may outlive the run.
func TestMain(m *testing.M) {
	os.Exit(testpool.RunWithLeakCheck(m))
}
