package driver

import (
	"net"

	"golang.org/x/sys/unix"
)

// listenPrivate binds with a umask that makes the socket 0600 from birth;
// umask is process-wide, but this runs once at start-up before any other
// goroutine creates files.
func listenPrivate(path string) (net.Listener, error) {
	old := unix.Umask(0o177)
	defer unix.Umask(old)
	return net.Listen("unix", path)
}
