package pipeline

import (
	"context"
	"testing"
	"time"
)

// TestKeyedLocks: one holder per key, a waiter honours its context, and no entry outlives
// its holders and waiters (request_id locks would otherwise grow without bound).
func TestKeyedLocks(t *testing.T) {
	k := &keyedLocks{}
	ctx := context.Background()
	u1, err := acquire(ctx, k, "a")
	if err != nil {
		t.Fatal(err)
	}
	ub, err := acquire(ctx, k, "b") // another key is free
	if err != nil {
		t.Fatal(err)
	}
	ub()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	if _, err := acquire(wctx, k, "a"); err == nil {
		t.Fatal("second holder of a")
	}
	cancel()
	got := make(chan func(), 1)
	go func() {
		u, err := acquire(ctx, k, "a")
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	select {
	case <-got:
		t.Fatal("a taken while held")
	case <-time.After(30 * time.Millisecond):
	}
	u1()
	(<-got)()
	k.mu.Lock()
	n := len(k.m)
	k.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d entries left", n)
	}
}
