package fourmica

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is matched (errors.Is) by every *FieldError: the input was rejected.
var ErrInvalid = errors.New("fourmica: invalid input")

// ErrSignatureMismatch reports a well-formed signature that does not recover to the expected
// user address (Core answers 400 "Invalid signature").
var ErrSignatureMismatch = errors.New("fourmica: signature does not recover to user_address")

// FieldError is a rejected input value. Field is a JSON path such as "claims.tab_id" or
// "accepts[0].extra.tabEndpoint"; Reason is a short human explanation. It never holds secrets.
type FieldError struct {
	Field  string
	Reason string
}

// Error returns "fourmica: invalid <field>: <reason>".
func (e *FieldError) Error() string {
	return "fourmica: invalid " + e.Field + ": " + e.Reason
}

// Is makes errors.Is(err, ErrInvalid) true for every FieldError.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// prefixField returns err with its field prefixed by prefix+"." when it is a *FieldError.
func prefixField(prefix string, err error) error {
	var fe *FieldError
	if prefix != "" && errors.As(err, &fe) && fe.Field != prefix && !strings.HasPrefix(fe.Field, prefix+".") {
		return &FieldError{Field: prefix + "." + fe.Field, Reason: fe.Reason}
	}
	return err
}
