package bpf

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func dupFD(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup map descriptor: %w", err)
	}
	return nfd, nil
}

func closeFD(fd int) { unix.Close(fd) }
