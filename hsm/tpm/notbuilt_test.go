//go:build no_tpm

package tpm

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/signerd/signerd/hsm"
)

func TestNotBuilt(t *testing.T) {
	_, err := hsm.Open(context.Background(), hsm.Options{Type: "tpm"})
	if !errors.Is(err, hsm.ErrNotBuilt) || !strings.Contains(err.Error(), "no_tpm") {
		t.Fatalf("Open err = %v, want ErrNotBuilt naming the no_tpm tag", err)
	}
}
