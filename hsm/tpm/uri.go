//go:build !no_tpm

package tpm

import (
	"fmt"
	"strings"

	"github.com/signerd/signerd/hsm"
)

// URIScheme prefixes every TPM key reference.
const URIScheme = "tpm:"

// idLen is the length of a key id: 16 lowercase hex digits (64 random bits).
const idLen = 16

// KeyURI formats the reference of the key with the given id: "tpm:key=<id>".
func KeyURI(id string) string { return URIScheme + "key=" + id }

// ParseURI returns the key id of a "tpm:key=<16 hex digits>" reference, or an error wrapping
// hsm.ErrBadURI.
func ParseURI(uri string) (string, error) {
	rest, ok := strings.CutPrefix(uri, URIScheme)
	if !ok {
		return "", fmt.Errorf("%w: want tpm:key=<id>", hsm.ErrBadURI)
	}
	id, ok := strings.CutPrefix(rest, "key=")
	if !ok || !validID(id) {
		return "", fmt.Errorf("%w: want tpm:key=<%d lowercase hex digits>", hsm.ErrBadURI, idLen)
	}
	return id, nil
}

func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
