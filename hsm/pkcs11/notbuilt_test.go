//go:build no_pkcs11

package pkcs11_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/signerd/signerd/hsm"
	_ "github.com/signerd/signerd/hsm/pkcs11"
)

// TestNotBuiltTagged runs only in a -tags no_pkcs11 build (see TestNotBuilt).
func TestNotBuiltTagged(t *testing.T) {
	_, err := hsm.Open(context.Background(), hsm.Options{Type: "pkcs11"})
	if !errors.Is(err, hsm.ErrNotBuilt) || !strings.Contains(err.Error(), "built without pkcs11") {
		t.Fatalf("got %v", err)
	}
}
