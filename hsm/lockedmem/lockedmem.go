//go:build linux

// Package lockedmem provides small byte buffers for secret key material that live outside the
// Go heap: anonymous mmap'd pages that are mlock'ed (never swapped), excluded from core dumps
// (MADV_DONTDUMP) and wiped in forked children (MADV_WIPEONFORK), and that are zeroed before
// they are unmapped. The garbage collector never moves or copies them.
//
// Locked memory is limited by RLIMIT_MEMLOCK (commonly 8 MiB for unprivileged processes), so a
// Buffer rounds its size up to whole pages and callers should allocate few, small buffers.
package lockedmem

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned when a closed Buffer is used.
var ErrClosed = errors.New("lockedmem: buffer closed")

// Buffer is a fixed-size secret buffer in locked, non-dumpable memory. Its methods are safe for
// concurrent use, but the slice returned by Bytes must only be used while the caller ensures
// the buffer is not closed concurrently (callers hold their own lock).
type Buffer struct {
	mu     sync.Mutex
	region []byte // whole mapping (page-rounded)
	data   []byte // region[:size]
}

// New maps, locks and returns a zeroed buffer of size bytes (size > 0).
func New(size int) (*Buffer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("lockedmem: size %d", size)
	}
	page := unix.Getpagesize()
	n := (size + page - 1) / page * page
	region, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("lockedmem: mmap %d bytes: %w", n, err)
	}
	if err := unix.Mlock(region); err != nil {
		_ = unix.Munmap(region)
		return nil, fmt.Errorf("lockedmem: mlock %d bytes (check RLIMIT_MEMLOCK): %w", n, err)
	}
	if err := unix.Madvise(region, unix.MADV_DONTDUMP); err != nil {
		_ = unix.Munlock(region)
		_ = unix.Munmap(region)
		return nil, fmt.Errorf("lockedmem: madvise(MADV_DONTDUMP): %w", err)
	}
	// MADV_WIPEONFORK is best effort (Linux >= 4.14): a forked child sees zeros.
	_ = unix.Madvise(region, unix.MADV_WIPEONFORK)
	return &Buffer{region: region, data: region[:size]}, nil
}

// Bytes returns the buffer's memory (len == the size given to New), or nil once closed.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.data
}

// Len is the usable size of the buffer.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.data)
}

// Zero overwrites the whole mapping with zeros. It is a no-op on a closed buffer.
func (b *Buffer) Zero() {
	b.mu.Lock()
	defer b.mu.Unlock()
	wipe(b.region)
}

// IsZero reports whether every byte of the buffer is zero (true for a closed buffer).
func (b *Buffer) IsZero() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	var acc byte
	for _, c := range b.region {
		acc |= c
	}
	return acc == 0
}

// Close zeroes, unlocks and unmaps the buffer. It is idempotent.
func (b *Buffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.region == nil {
		return nil
	}
	wipe(b.region)
	err1 := unix.Munlock(b.region)
	err2 := unix.Munmap(b.region)
	b.region, b.data = nil, nil
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("lockedmem: release: %w", err)
	}
	return nil
}

// wipe zeroes p. The clear builtin on memory the compiler cannot prove dead is not elided;
// the mapping outlives the call, so the stores are observable.
func wipe(p []byte) {
	clear(p)
}
