package server

import (
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"unsafe"

	"github.com/signerd/signerd/signerd/pipeline"
)

// encoding/json matches object keys to struct fields case-insensitively and keeps the last of
// duplicate keys, so {"claims": A, "Claims": B} would decode B while anything in front of the
// daemon that reads the first member sees A. checkKeys closes that: run over a body that
// encoding/json has already accepted (so it is valid JSON), it rejects any object with a
// duplicate key (at every depth) and any key of a struct-typed object that is not the exact
// spelling of one of its fields. It is one pass over the bytes without allocation for the
// usual body (keys without escapes, small objects).

// structFields maps a struct type to its exact JSON field names and their types.
var structFields sync.Map // reflect.Type → map[string]reflect.Type

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if m, ok := structFields.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	structFields.Store(t, m)
	return m
}

// shape is what checkKeys knows of a JSON value's destination: a struct (exact keys), or
// anything else (duplicate keys only).
func shape(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil // custom decoding (json.RawMessage, U256, ...): checked generically
	}
	return t
}

// checkKeys checks body (valid JSON) against dst's type; see above.
func checkKeys(body []byte, dst any) *pipeline.Error {
	s := keyScanner{b: body}
	s.path = s.pathBuf[:0]
	s.value(shape(reflect.TypeOf(dst)))
	return s.err
}

type keyScanner struct {
	b       []byte
	i       int
	err     *pipeline.Error
	path    []string // keys from the top to the current value (names the field in an error)
	pathBuf [8]string
}

// fail records the first error, naming the field at the current path plus key.
func (s *keyScanner) fail(key, reason string) {
	f := strings.Join(append(s.path, key), ".")
	s.err = pipeline.Invalidf(f, "%s", reason)
}

func (s *keyScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str reads a string starting at its opening quote and returns its raw contents and whether
// they contain escapes.
func (s *keyScanner) str() (raw []byte, escaped bool) {
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch s.b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			s.i = j + 1
			return s.b[start:j], escaped
		}
	}
	s.i = len(s.b)
	return s.b[start:], escaped
}

func (s *keyScanner) value(t reflect.Type) {
	s.ws()
	if s.i >= len(s.b) || s.err != nil {
		return
	}
	switch s.b[s.i] {
	case '{':
		s.object(t)
	case '[':
		s.i++
		var et reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			et = shape(t.Elem())
		}
		for s.err == nil {
			s.ws()
			if s.i >= len(s.b) {
				return
			}
			if s.b[s.i] == ']' {
				s.i++
				return
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			s.value(et)
		}
	case '"':
		s.str()
	default: // number, true, false, null
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return
			}
			s.i++
		}
	}
}

func (s *keyScanner) object(t reflect.Type) {
	s.i++ // '{'
	var fields map[string]reflect.Type
	var elem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Struct:
			fields = fieldsOf(t)
		case reflect.Map:
			elem = shape(t.Elem())
		}
	}
	var small [16]string // keys seen, for the usual small object
	seen := small[:0]
	var many map[string]struct{}
	for s.err == nil {
		s.ws()
		if s.i >= len(s.b) {
			return
		}
		switch s.b[s.i] {
		case '}':
			s.i++
			return
		case ',':
			s.i++
			continue
		}
		raw, escaped := s.str()
		// The key aliases the body (no copy): it is only compared and kept while scanning.
		key := ""
		if len(raw) > 0 {
			key = unsafe.String(&raw[0], len(raw))
		}
		if escaped {
			key = unescapeKey(s.b[s.i-len(raw)-2 : s.i])
		}
		if many != nil {
			if _, dup := many[key]; dup {
				s.fail(key, "duplicate field")
				return
			}
			many[key] = struct{}{}
		} else {
			for _, k := range seen {
				if k == key {
					s.fail(key, "duplicate field")
					return
				}
			}
			if len(seen) < cap(small) {
				seen = append(seen, key)
			} else {
				many = make(map[string]struct{}, 2*len(seen))
				for _, k := range seen {
					many[k] = struct{}{}
				}
				many[key] = struct{}{}
			}
		}
		vt := elem
		if fields != nil {
			ft, ok := fields[key]
			if !ok {
				s.fail(key, "unknown field (field names are case-sensitive)")
				return
			}
			vt = shape(ft)
		}
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ':' {
			s.i++
		}
		s.path = append(s.path, key)
		s.value(vt)
		s.path = s.path[:len(s.path)-1]
	}
}

// unescapeKey decodes a quoted key with escapes (valid JSON: encoding/json already read it).
func unescapeKey(quoted []byte) string {
	var k string
	if json.Unmarshal(quoted, &k) != nil {
		return string(quoted)
	}
	return k
}
