package freeze

import (
	"os"
	"testing"

	"github.com/tarn-csi/tarn/test/testpool"
)

func TestMain(m *testing.M) {
	os.Exit(testpool.RunWithLeakCheck(m))
}
