//go:build !linux

package loopdev

import (
	"errors"
	"fmt"
)

// Loop devices are Linux-only; these stubs let packages that depend on
// Interface (and their fakes) build on developer machines running other OSes.

func unsupported(op string) error {
	return fmt.Errorf("loopdev %s: %w", op, errors.ErrUnsupported)
}

func (m Manager) Attach(string, Options) (Device, error) { return Device{}, unsupported("attach") }

func (m Manager) Detach(string) error { return unsupported("detach") }

func (m Manager) FindByBackingFile(string) ([]Device, error) { return nil, unsupported("find") }

func (m Manager) List() ([]Device, error) { return nil, unsupported("list") }

func (m Manager) RefreshSize(string) error { return unsupported("refresh size") }
