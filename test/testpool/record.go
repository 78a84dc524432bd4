package testpool

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// RecordXattr is the extended attribute in which the loop backend keeps an
// object's record; tests read it from outside the backend on purpose, to
// check what is on disk rather than what the backend says.
const RecordXattr = "user.tarn.record"

// ReadRecord returns the raw JSON record of a loop-pool object directory:
// its xattr, or meta.json where the pool could not hold one.
func ReadRecord(dir string) ([]byte, error) {
	size, err := unix.Getxattr(dir, RecordXattr, nil)
	if err == nil {
		buf := make([]byte, size)
		n, err := unix.Getxattr(dir, RecordXattr, buf)
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	if !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.ENOTSUP) {
		return nil, err
	}
	return os.ReadFile(filepath.Join(dir, "meta.json"))
}

// HasRecordXattr says whether dir carries a record xattr.
func HasRecordXattr(dir string) bool {
	_, err := unix.Getxattr(dir, RecordXattr, nil)
	return err == nil
}
