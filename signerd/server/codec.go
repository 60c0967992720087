package server

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/signerd/signerd/signerd/pipeline"
)

// Content types the daemon speaks. JSON is the default; CBOR is chosen by the client's
// Content-Type (and answered in kind), or for bodiless requests by Accept.
const (
	ctJSON = "application/json"
	ctCBOR = "application/cbor"
)

var cborDec cbor.DecMode
var cborEnc cbor.EncMode

func init() {
	var err error
	cborDec, err = cbor.DecOptions{
		DupMapKey:             cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:       16,
		MaxArrayElements:      4096,
		MaxMapPairs:           1024,
		IndefLength:           cbor.IndefLengthForbidden,
		TagsMd:                cbor.TagsAllowed,
		DefaultMapType:        reflect.TypeOf(map[string]any(nil)),
		BigIntDec:             cbor.BigIntDecodePointer,
		DefaultByteStringType: reflect.TypeOf([]byte(nil)),
	}.DecMode()
	if err != nil {
		panic(err)
	}
	cborEnc, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
}

// wantsCBOR reports whether the request's body is CBOR (or, without a body, whether the
// client asks for CBOR answers).
func wantsCBOR(r *http.Request) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, _ := mime.ParseMediaType(ct)
		return mt == ctCBOR
	}
	return strings.Contains(r.Header.Get("Accept"), ctCBOR)
}

// errTooLarge is returned when the body exceeds the limit.
var errTooLarge = errors.New("request body too large")

// readBody reads at most max bytes of the body.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, errTooLarge
	}
	var b []byte
	if n := r.ContentLength; n > 0 {
		// Known length: one exact read (plus one byte to catch a body longer than announced).
		b = make([]byte, n, n+1)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, err
		}
		var one [1]byte
		if k, _ := r.Body.Read(one[:]); k > 0 {
			return nil, errTooLarge
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, errTooLarge
	}
	return b, nil
}

// decodeBody decodes the request body (JSON, or CBOR transcoded to JSON) into dst, strictly:
// unknown fields, trailing data, wrong types and oversize bodies are rejected with an error
// naming the field.
func decodeBody(r *http.Request, max int64, dst any) *pipeline.Error {
	return decodeBodyWipe(r, max, dst, false)
}

// decodeBodyWipe is decodeBody that, with wipe, zeroes the raw body (and its JSON transcoding)
// once decoded: for bodies that carry key material (keys/import).
func decodeBodyWipe(r *http.Request, max int64, dst any, wipe bool) *pipeline.Error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != ctJSON && mt != ctCBOR) {
			e := pipeline.Invalidf("Content-Type", "want application/json or application/cbor")
			e.Status = http.StatusUnsupportedMediaType
			return e
		}
	}
	body, err := readBody(r, max)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			e := pipeline.Invalidf("body", "larger than %d bytes", max)
			e.Status = http.StatusRequestEntityTooLarge
			return e
		}
		return pipeline.Invalidf("body", "could not be read")
	}
	if wipe {
		defer clear(body)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return pipeline.Invalidf("body", "empty")
	}
	if wantsCBOR(r) {
		j, err := cborToJSON(body)
		if err != nil {
			return pipeline.Invalidf("body", "%s", err.Error())
		}
		if wipe {
			defer clear(j)
		}
		body = j
	}
	return decodeJSON(body, dst)
}

// decodeJSON decodes one JSON value into dst with unknown fields rejected.
func decodeJSON(body []byte, dst any) *pipeline.Error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return pipeline.Invalidf("body", "trailing data after the JSON value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return pipeline.Invalidf("body", "trailing data after the JSON value")
	}
	return checkKeys(body, dst)
}

// jsonError turns an encoding/json error into an invalid_request naming the field.
func jsonError(err error) *pipeline.Error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	var fe *fieldErr
	switch {
	case errors.As(err, &fe):
		return pipeline.Invalidf(fe.field, "%s", fe.reason)
	case errors.As(err, &te):
		f := te.Field
		if f == "" {
			f = "body"
		}
		return pipeline.Invalidf(f, "must be %s, not a JSON %s", jsonKind(te.Type), te.Value)
	case errors.As(err, &se):
		return pipeline.Invalidf("body", "malformed JSON at byte %d", se.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return pipeline.Invalidf("body", "truncated JSON")
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		name, _ = strconv.Unquote(name)
		return pipeline.Invalidf(name, "unknown field")
	}
	return pipeline.Invalidf("body", "%s", strings.TrimPrefix(msg, "json: "))
}

// fieldErr lets custom UnmarshalJSON methods name the field they reject.
type fieldErr struct{ field, reason string }

func (e *fieldErr) Error() string { return e.field + ": " + e.reason }

func jsonKind(t reflect.Type) string {
	if t == nil {
		return "a value of another type"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	}
	return "a " + t.String()
}

// cborToJSON transcodes a CBOR request into the JSON the handlers decode, so both encodings
// share one schema and one strict decoder. Byte strings become 0x-hex strings, bignums decimal
// strings; floats, non-string map keys, undefined and unknown tags are rejected.
func cborToJSON(b []byte) ([]byte, error) {
	var v any
	rest, err := cborDec.UnmarshalFirst(b, &v)
	if err != nil {
		return nil, fmt.Errorf("malformed CBOR: %s", strings.TrimPrefix(err.Error(), "cbor: "))
	}
	if len(rest) != 0 {
		return nil, errors.New("trailing data after the CBOR value")
	}
	j, err := jsonable(v, 0)
	if err != nil {
		return nil, err
	}
	return json.Marshal(j)
}

func jsonable(v any, depth int) (any, error) {
	if depth > 16 {
		return nil, errors.New("CBOR nested too deeply")
	}
	switch x := v.(type) {
	case nil, bool, string, uint64, int64:
		return x, nil
	case []byte:
		return "0x" + hex.EncodeToString(x), nil
	case *big.Int:
		return x.String(), nil
	case big.Int:
		return x.String(), nil
	case []any:
		out := make([]any, len(x))
		for i := range x {
			e, err := jsonable(x[i], depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = e
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			j, err := jsonable(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = j
		}
		return out, nil
	case float32, float64:
		return nil, errors.New("CBOR floating-point values are not accepted")
	case cbor.Tag, cbor.RawTag:
		return nil, errors.New("CBOR tags other than bignums are not accepted")
	default:
		return nil, fmt.Errorf("CBOR value of type %T is not accepted", v)
	}
}

// writeJSONBytes writes an already-encoded JSON body, transcoding to CBOR when cborOut.
func writeBody(w http.ResponseWriter, status int, body []byte, cborOut bool) {
	h := w.Header()
	if cborOut {
		cb, err := jsonToCBOR(body)
		if err == nil {
			h.Set("Content-Type", ctCBOR)
			h.Set("Content-Length", strconv.Itoa(len(cb)))
			w.WriteHeader(status)
			w.Write(cb)
			return
		}
	}
	h.Set("Content-Type", ctJSON)
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	w.Write(body)
	w.Write([]byte{'\n'})
}

// jsonToCBOR transcodes a JSON answer: integers stay integers (uint64/int64), other numbers
// become strings (the daemon never emits floats).
func jsonToCBOR(body []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return cborEnc.Marshal(numbers(v))
}

func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if u, err := strconv.ParseUint(string(x), 10, 64); err == nil {
			return u
		}
		if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return i
		}
		return string(x)
	case []any:
		for i := range x {
			x[i] = numbers(x[i])
		}
		return x
	case map[string]any:
		for k := range x {
			x[k] = numbers(x[k])
		}
		return x
	}
	return v
}

// errorBody is the error envelope {"error": {...}}.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code       string `json:"code"`
	Reason     string `json:"reason"`
	Rule       string `json:"rule,omitempty"`
	Field      string `json:"field,omitempty"`
	RecordID   string `json:"record_id,omitempty"`
	ApprovalID string `json:"approval_id,omitempty"`
}

// writeError writes e as the error envelope, with Retry-After when set.
func writeError(w http.ResponseWriter, r *http.Request, e *pipeline.Error) {
	d := errorDetail{Code: e.Code, Reason: e.Reason, Rule: e.Rule, Field: e.Field, ApprovalID: e.ApprovalID}
	if e.RecordID != 0 {
		d.RecordID = strconv.FormatUint(e.RecordID, 10)
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	if e.ApprovalID != "" && e.Kind == pipeline.Pending {
		w.Header().Set("Location", "/v1/approvals/"+e.ApprovalID)
	}
	b, _ := json.Marshal(errorBody{d})
	status := e.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	writeBody(w, status, b, wantsCBOR(r))
}

// writeValue encodes v as JSON (or CBOR) with status.
func writeValue(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, r, pipeline.AsError(err))
		return
	}
	writeBody(w, status, b, wantsCBOR(r))
}
