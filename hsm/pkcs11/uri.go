package pkcs11

import (
	"fmt"
	"strings"

	"github.com/signerd/signerd/hsm"
)

// URI is the subset of an RFC 7512 PKCS#11 URI that names one signerd key:
//
//	pkcs11:token=<token label>;id=<pct-encoded CKA_ID>;object=<key label>;type=private
//
// ID is required; Token, Object and Type are optional when parsing (Type must be "private" if
// present). Any other attribute, a query part (pin-value, module-path, …) or a malformed
// percent-escape is rejected with hsm.ErrBadURI: a key reference never carries a PIN.
type URI struct {
	Token  string
	ID     []byte
	Object string
	Type   string
}

// ParseURI parses a key reference.
func ParseURI(s string) (URI, error) {
	var u URI
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("%w: not a pkcs11: URI", hsm.ErrBadURI)
	}
	if strings.ContainsAny(rest, "?#") {
		return u, fmt.Errorf("%w: query and fragment parts are not accepted", hsm.ErrBadURI)
	}
	seen := map[string]bool{}
	haveID := false
	for _, part := range strings.Split(rest, ";") {
		if part == "" {
			return u, fmt.Errorf("%w: empty attribute", hsm.ErrBadURI)
		}
		name, raw, ok := strings.Cut(part, "=")
		if !ok {
			return u, fmt.Errorf("%w: attribute %q has no value", hsm.ErrBadURI, name)
		}
		if seen[name] {
			return u, fmt.Errorf("%w: attribute %q repeated", hsm.ErrBadURI, name)
		}
		seen[name] = true
		val, err := pctDecode(raw)
		if err != nil {
			return u, fmt.Errorf("%w: attribute %q: %v", hsm.ErrBadURI, name, err)
		}
		switch name {
		case "token":
			u.Token = string(val)
		case "id":
			if len(val) == 0 {
				return u, fmt.Errorf("%w: empty id", hsm.ErrBadURI)
			}
			u.ID, haveID = val, true
		case "object":
			u.Object = string(val)
		case "type":
			if string(val) != "private" {
				return u, fmt.Errorf("%w: type=%q, signerd keys are type=private", hsm.ErrBadURI, val)
			}
			u.Type = "private"
		default:
			return u, fmt.Errorf("%w: unsupported attribute %q", hsm.ErrBadURI, name)
		}
	}
	if !haveID {
		return u, fmt.Errorf("%w: id attribute missing", hsm.ErrBadURI)
	}
	return u, nil
}

// String formats u as a canonical URI: token, id (every byte percent-encoded), object, type.
func (u URI) String() string {
	var b strings.Builder
	b.WriteString("pkcs11:")
	if u.Token != "" {
		b.WriteString("token=")
		b.WriteString(pctEncode([]byte(u.Token), false))
		b.WriteByte(';')
	}
	b.WriteString("id=")
	b.WriteString(pctEncode(u.ID, true))
	if u.Object != "" {
		b.WriteString(";object=")
		b.WriteString(pctEncode([]byte(u.Object), false))
	}
	b.WriteString(";type=private")
	return b.String()
}

// pctDecode decodes RFC 3986 percent-encoding. Characters outside RFC 7512's pchar set for
// path attribute values (unreserved, sub-delims except ';', ':', '@', and '&') are refused.
func pctDecode(s string) ([]byte, error) {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) {
				return nil, fmt.Errorf("truncated percent-escape")
			}
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("bad percent-escape %q", s[i:i+3])
			}
			out = append(out, hi<<4|lo)
			i += 2
		case isPathChar(c):
			out = append(out, c)
		default:
			return nil, fmt.Errorf("character %q must be percent-encoded", c)
		}
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// isPathChar reports whether c may appear unescaped in a pk11-pchar (RFC 7512 §2.3).
func isPathChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~:[]@!$'()*+,=&", c) >= 0
}

// pctEncode escapes everything but unreserved characters (all bytes when all is set).
func pctEncode(b []byte, all bool) string {
	const hexd = "0123456789ABCDEF"
	var s strings.Builder
	for _, c := range b {
		unreserved := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
		if unreserved && !all {
			s.WriteByte(c)
			continue
		}
		s.WriteByte('%')
		s.WriteByte(hexd[c>>4])
		s.WriteByte(hexd[c&15])
	}
	return s.String()
}
