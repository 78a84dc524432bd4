package testpool

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	os.Exit(RunWithLeakCheck(m))
}
