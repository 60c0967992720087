package coreclient_test

import (
	"testing"

	"github.com/signerd/signerd/signerd/coreclient/corefake"
)

// fakeCore is the fake Core of package corefake (shared with the daemon's tests).
type fakeCore = corefake.Core

func newFakeCore(t testing.TB, chainID uint64) *fakeCore { return corefake.New(t, chainID) }
