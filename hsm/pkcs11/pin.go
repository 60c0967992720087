package pkcs11

import (
	"bytes"
	"fmt"
	"os"

	"github.com/signerd/signerd/hsm"
)

// ReadPIN returns the user PIN from opts.PINFile (which must be a regular file of mode 0400
// or 0600) or, when no file is named, from the environment variable opts.PINEnv. A trailing
// newline is dropped. The caller zeroes the result.
func ReadPIN(opts hsm.PKCS11Options) ([]byte, error) {
	switch {
	case opts.PINFile != "":
		fi, err := os.Stat(opts.PINFile)
		if err != nil {
			return nil, fmt.Errorf("%w: PIN file: %v", hsm.ErrBadPIN, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: PIN file %s is not a regular file", hsm.ErrBadPIN, opts.PINFile)
		}
		if p := fi.Mode().Perm(); p != 0o400 && p != 0o600 {
			return nil, fmt.Errorf("%w: PIN file %s has mode %04o, want 0400 or 0600", hsm.ErrBadPIN, opts.PINFile, p)
		}
		raw, err := os.ReadFile(opts.PINFile)
		if err != nil {
			return nil, fmt.Errorf("%w: PIN file: %v", hsm.ErrBadPIN, err)
		}
		pin := bytes.TrimRight(raw, "\r\n")
		out := append([]byte(nil), pin...)
		hsm.Zero(raw)
		if len(out) == 0 {
			return nil, fmt.Errorf("%w: PIN file %s is empty", hsm.ErrBadPIN, opts.PINFile)
		}
		return out, nil
	case opts.PINEnv != "":
		v, ok := os.LookupEnv(opts.PINEnv)
		if !ok || v == "" {
			return nil, fmt.Errorf("%w: environment variable %s is not set", hsm.ErrBadPIN, opts.PINEnv)
		}
		return []byte(v), nil
	}
	return nil, fmt.Errorf("%w: pkcs11 needs pin_file or pin_env (a PIN is never part of the config)", hsm.ErrInvalidOptions)
}
