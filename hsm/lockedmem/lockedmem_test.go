//go:build linux

package lockedmem

import (
	"bufio"
	"crypto/rand"
	"os"
	"strconv"
	"strings"
	"testing"
)

// vmLckKB reads VmLck from /proc/self/status.
func vmLckKB(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmLck:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmLck line")
	return 0
}

func TestLifecycle(t *testing.T) {
	before := vmLckKB(t)
	b, err := New(32)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Len(); got != 32 {
		t.Fatalf("Len = %d", got)
	}
	if after := vmLckKB(t); after < before+4 {
		t.Fatalf("VmLck %d kB -> %d kB: page not locked", before, after)
	}
	if !b.IsZero() {
		t.Fatal("new buffer not zero")
	}
	if _, err := rand.Read(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if b.IsZero() {
		t.Fatal("random fill left buffer zero")
	}
	mem := b.Bytes()
	b.Zero()
	for i, c := range mem {
		if c != 0 {
			t.Fatalf("byte %d = %#x after Zero", i, c)
		}
	}
	copy(b.Bytes(), []byte{1, 2, 3})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if b.Bytes() != nil {
		t.Fatal("Bytes after Close not nil")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if after := vmLckKB(t); after != before {
		t.Fatalf("VmLck %d kB after Close, want %d", after, before)
	}
}

func TestBadSize(t *testing.T) {
	for _, n := range []int{0, -1} {
		if _, err := New(n); err == nil {
			t.Fatalf("New(%d) succeeded", n)
		}
	}
}

func TestPageRounding(t *testing.T) {
	b, err := New(5000)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Len() != 5000 || len(b.region)%os.Getpagesize() != 0 || len(b.region) < 5000 {
		t.Fatalf("len %d region %d", b.Len(), len(b.region))
	}
}
