package hsm

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRegistry(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, Options{Type: "nonesuch"}); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("unknown backend: %v", err)
	}
	RegisterNotBuilt("test-left-out")
	_, err := Open(ctx, Options{Type: "test-left-out"})
	if !errors.Is(err, ErrNotBuilt) || !strings.Contains(err.Error(), "built without test-left-out") {
		t.Fatalf("not built: %v", err)
	}
	called := false
	Register("test-fake", func(_ context.Context, o Options) (Backend, error) {
		called = true
		if o.Type != "test-fake" {
			t.Errorf("opener got type %q", o.Type)
		}
		return nil, ErrInvalidOptions
	})
	if _, err := Open(ctx, Options{Type: "test-fake"}); !errors.Is(err, ErrInvalidOptions) || !called {
		t.Fatalf("registered opener: called=%v err=%v", called, err)
	}
	names := Backends()
	found := false
	for i, n := range names {
		found = found || n == "test-fake"
		if i > 0 && names[i-1] > n {
			t.Fatalf("Backends not sorted: %v", names)
		}
	}
	if !found {
		t.Fatalf("Backends() = %v", names)
	}
}

func TestErrorsDistinct(t *testing.T) {
	all := []error{ErrNotBuilt, ErrUnknownBackend, ErrInvalidOptions, ErrUnknownKey, ErrKeyRetired, ErrBadURI,
		ErrBadPIN, ErrTokenNotFound, ErrUnavailable, ErrOverloaded, ErrPolicyMismatch, ErrCorrupt, ErrBadKey, ErrSignature}
	for i, a := range all {
		for j, b := range all {
			if i != j && errors.Is(a, b) {
				t.Fatalf("%v is %v", a, b)
			}
		}
	}
}
