package fourmica

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"unicode/utf8"
)

// Version is the guarantee claims version: V1 or V2.
type Version uint8

// Claim versions; the wire tags are "v1" and "v2".
const (
	V1 Version = 1
	V2 Version = 2
)

// String returns the wire tag ("v1", "v2").
func (v Version) String() string { return "v" + strconv.Itoa(int(v)) }

// ClaimsV1 are the V1 guarantee claims (SolGuaranteeRequestClaimsV1).
type ClaimsV1 struct {
	User      Address // user_address (the payer)
	Recipient Address // recipient_address
	TabID     U256    // tab_id
	ReqID     U256    // req_id
	Amount    U256    // amount
	Asset     Address // asset_address (zero = ETH)
	Timestamp uint64  // timestamp, unix seconds
}

// ClaimsV2 are the V2 guarantee claims (SolGuaranteeRequestClaimsV2): the V1 payment fields
// plus the validation policy. The V1 fields are embedded and flattened on the wire.
type ClaimsV2 struct {
	ClaimsV1
	ValidationRegistry    Address // validation_registry_address
	ValidationRequestHash Hash    // validation_request_hash (canonical, see ValidationRequestHash)
	ValidationChainID     uint64  // validation_chain_id (hashed as uint256)
	Validator             Address // validator_address
	ValidatorAgentID      U256    // validator_agent_id
	MinValidationScore    uint8   // min_validation_score, 1..100
	ValidationSubjectHash Hash    // validation_subject_hash (canonical, see ValidationSubjectHash)
	JobHash               Hash    // job_hash, non-zero
	RequiredValidationTag string  // required_validation_tag, UTF-8, may be empty
}

// Claims is the tagged union of the two versions. Exactly one of V1 and V2 is non-nil and
// Version says which.
type Claims struct {
	Version Version
	V1      *ClaimsV1
	V2      *ClaimsV2
}

// ClaimsOfV1 wraps V1 claims.
func ClaimsOfV1(c *ClaimsV1) Claims { return Claims{Version: V1, V1: c} }

// ClaimsOfV2 wraps V2 claims.
func ClaimsOfV2(c *ClaimsV2) Claims { return Claims{Version: V2, V2: c} }

// Payment returns the V1 payment fields of either version (nil for an empty union).
func (c Claims) Payment() *ClaimsV1 {
	switch {
	case c.Version == V1 && c.V1 != nil:
		return c.V1
	case c.Version == V2 && c.V2 != nil:
		return &c.V2.ClaimsV1
	}
	return nil
}

// valid checks the union is well formed and a V2 tag is valid UTF-8 (JSON cannot carry other
// bytes, so Core would hash something else than we sign).
func (c Claims) valid() error {
	if c.Payment() == nil {
		return &FieldError{Field: "version", Reason: "claims union is empty or its Version does not match"}
	}
	if c.Version == V2 && !utf8.ValidString(c.V2.RequiredValidationTag) {
		return &FieldError{Field: "required_validation_tag", Reason: "not valid UTF-8"}
	}
	return nil
}

// DecodeClaims parses Core wire-format claims JSON (one object with a "version" tag). V2 claims
// are checked as Core checks them while deserializing ([ClaimsV2.Check] without a chain id).
func DecodeClaims(data []byte) (Claims, error) {
	var c Claims
	err := c.UnmarshalJSON(data)
	return c, err
}

// UnmarshalJSON implements Core's wire format; see DecodeClaims.
func (c *Claims) UnmarshalJSON(data []byte) error {
	fields, err := readObject(data, "claims")
	if err != nil {
		return err
	}
	rawVersion, ok := fields["version"]
	if !ok {
		return &FieldError{Field: "version", Reason: "missing"}
	}
	var tag string
	if err := json.Unmarshal(rawVersion, &tag); err != nil {
		return &FieldError{Field: "version", Reason: "must be the string \"v1\" or \"v2\""}
	}
	d := fieldDecoder{fields: fields}
	var p ClaimsV1
	d.address("user_address", &p.User)
	d.address("recipient_address", &p.Recipient)
	d.u256("tab_id", &p.TabID)
	d.u256("req_id", &p.ReqID)
	d.u256("amount", &p.Amount)
	d.address("asset_address", &p.Asset)
	d.u64("timestamp", &p.Timestamp)
	switch tag {
	case "v1":
		if d.err != nil {
			return d.err
		}
		*c = ClaimsOfV1(&p)
		return nil
	case "v2":
	default:
		return &FieldError{Field: "version", Reason: "unknown version tag " + strconv.Quote(tag)}
	}
	v2 := &ClaimsV2{ClaimsV1: p}
	d.address("validation_registry_address", &v2.ValidationRegistry)
	d.hash("validation_request_hash", &v2.ValidationRequestHash, true)
	d.u64("validation_chain_id", &v2.ValidationChainID)
	d.address("validator_address", &v2.Validator)
	d.u256("validator_agent_id", &v2.ValidatorAgentID)
	d.u8("min_validation_score", &v2.MinValidationScore)
	d.hash("validation_subject_hash", &v2.ValidationSubjectHash, true)
	d.hash("job_hash", &v2.JobHash, false) // serde default zero, then rejected by Check
	d.str("required_validation_tag", &v2.RequiredValidationTag)
	if d.err != nil {
		return d.err
	}
	if err := v2.Check(0); err != nil {
		return err
	}
	*c = ClaimsOfV2(v2)
	return nil
}

// MarshalJSON emits Core's wire format: "version" first, then the fields in Core's order,
// addresses and hashes lowercase, U256 as minimal "0x" hex.
func (c Claims) MarshalJSON() ([]byte, error) {
	if err := c.valid(); err != nil {
		return nil, err
	}
	return c.appendJSON(make([]byte, 0, 1024)), nil
}

func (c Claims) appendJSON(b []byte) []byte {
	p := c.Payment()
	b = append(b, `{"version":"`...)
	b = append(b, c.Version.String()...)
	b = append(b, `","user_address":"`...)
	b = append(b, p.User.Hex()...)
	b = append(b, `","recipient_address":"`...)
	b = append(b, p.Recipient.Hex()...)
	b = append(b, `","tab_id":"`...)
	b = p.TabID.appendHex(b)
	b = append(b, `","req_id":"`...)
	b = p.ReqID.appendHex(b)
	b = append(b, `","amount":"`...)
	b = p.Amount.appendHex(b)
	b = append(b, `","asset_address":"`...)
	b = append(b, p.Asset.Hex()...)
	b = append(b, `","timestamp":`...)
	b = strconv.AppendUint(b, p.Timestamp, 10)
	if c.Version == V2 {
		v := c.V2
		b = append(b, `,"validation_registry_address":"`...)
		b = append(b, v.ValidationRegistry.Hex()...)
		b = append(b, `","validation_request_hash":"`...)
		b = append(b, v.ValidationRequestHash.Hex()...)
		b = append(b, `","validation_chain_id":`...)
		b = strconv.AppendUint(b, v.ValidationChainID, 10)
		b = append(b, `,"validator_address":"`...)
		b = append(b, v.Validator.Hex()...)
		b = append(b, `","validator_agent_id":"`...)
		b = v.ValidatorAgentID.appendHex(b)
		b = append(b, `","min_validation_score":`...)
		b = strconv.AppendUint(b, uint64(v.MinValidationScore), 10)
		b = append(b, `,"validation_subject_hash":"`...)
		b = append(b, v.ValidationSubjectHash.Hex()...)
		b = append(b, `","job_hash":"`...)
		b = append(b, v.JobHash.Hex()...)
		b = append(b, `","required_validation_tag":`...)
		b = appendJSONString(b, v.RequiredValidationTag)
	}
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a Go string always encodes (invalid UTF-8 becomes U+FFFD)
	return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}

// Scheme is the signing scheme of a guarantee request.
type Scheme string

// The two schemes Core accepts (wire values).
const (
	SchemeEIP712 Scheme = "eip712"
	SchemeEIP191 Scheme = "eip191"
)

// ParseScheme accepts exactly "eip712" or "eip191", as Core's serde does.
func ParseScheme(s string) (Scheme, error) {
	switch Scheme(s) {
	case SchemeEIP712, SchemeEIP191:
		return Scheme(s), nil
	}
	return "", &FieldError{Field: "scheme", Reason: "unknown scheme " + strconv.Quote(s) + " (want eip712 or eip191)"}
}

// Request is the PaymentGuaranteeRequest body Core's POST /core/guarantees takes (and the x402
// 4mica-credit payload): {"claims", "signature", "scheme"}.
type Request struct {
	Claims    Claims
	Signature Signature
	Scheme    Scheme
}

// DecodeRequest parses a PaymentGuaranteeRequest body. It checks form only (see
// VerifySignature for the signature itself).
func DecodeRequest(data []byte) (*Request, error) {
	fields, err := readObject(data, "request")
	if err != nil {
		return nil, err
	}
	r := &Request{}
	raw, ok := fields["claims"]
	if !ok {
		return nil, &FieldError{Field: "claims", Reason: "missing"}
	}
	if err := r.Claims.UnmarshalJSON(raw); err != nil {
		return nil, prefixField("claims", err)
	}
	var sig, scheme string
	if raw, ok = fields["signature"]; !ok || json.Unmarshal(raw, &sig) != nil {
		return nil, &FieldError{Field: "signature", Reason: "missing or not a string"}
	}
	if r.Signature, err = ParseSignature(sig); err != nil {
		return nil, err
	}
	if raw, ok = fields["scheme"]; !ok || json.Unmarshal(raw, &scheme) != nil {
		return nil, &FieldError{Field: "scheme", Reason: "missing or not a string"}
	}
	if r.Scheme, err = ParseScheme(scheme); err != nil {
		return nil, err
	}
	return r, nil
}

// UnmarshalJSON parses a PaymentGuaranteeRequest body; see DecodeRequest.
func (r *Request) UnmarshalJSON(data []byte) error {
	v, err := DecodeRequest(data)
	if err != nil {
		return err
	}
	*r = *v
	return nil
}

// MarshalJSON emits {"claims":…,"signature":"0x…","scheme":"…"} ready to POST to Core.
func (r Request) MarshalJSON() ([]byte, error) {
	if err := r.Claims.valid(); err != nil {
		return nil, prefixField("claims", err)
	}
	if _, err := ParseScheme(string(r.Scheme)); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 1200)
	b = append(b, `{"claims":`...)
	b = r.Claims.appendJSON(b)
	b = append(b, `,"signature":"`...)
	b = append(b, r.Signature.Hex()...)
	b = append(b, `","scheme":"`...)
	b = append(b, r.Scheme...)
	return append(b, `"}`...), nil
}

// readObject reads one JSON object into its members, rejecting duplicate keys and trailing
// data (serde rejects duplicate fields). Keys are matched exactly (case-sensitive).
func readObject(data []byte, what string) (map[string]json.RawMessage, error) {
	if !utf8.Valid(data) { // serde_json rejects it; encoding/json would silently substitute U+FFFD
		return nil, &FieldError{Field: what, Reason: "not valid UTF-8"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, &FieldError{Field: what, Reason: "not a JSON object"}
	}
	out := make(map[string]json.RawMessage, 20)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, &FieldError{Field: what, Reason: "malformed JSON"}
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, &FieldError{Field: what, Reason: "malformed JSON"}
		}
		if _, dup := out[key]; dup {
			return nil, &FieldError{Field: key, Reason: "duplicate field"}
		}
		out[key] = raw
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, &FieldError{Field: what, Reason: "malformed JSON"}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &FieldError{Field: what, Reason: "trailing data after the object"}
	}
	return out, nil
}

// fieldDecoder decodes named members, keeping the first error (which names the field).
type fieldDecoder struct {
	fields map[string]json.RawMessage
	err    error
}

func (d *fieldDecoder) get(name string, required bool) (json.RawMessage, bool) {
	if d.err != nil {
		return nil, false
	}
	raw, ok := d.fields[name]
	if ok && string(bytes.TrimSpace(raw)) == "null" {
		ok = false
	}
	if !ok && required {
		d.err = &FieldError{Field: name, Reason: "missing"}
	}
	return raw, ok
}

func (d *fieldDecoder) fail(name string, err error) {
	if fe, ok := err.(*FieldError); ok {
		d.err = &FieldError{Field: name, Reason: fe.Reason}
		return
	}
	d.err = &FieldError{Field: name, Reason: err.Error()}
}

func (d *fieldDecoder) jsonString(name string, raw json.RawMessage) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		d.err = &FieldError{Field: name, Reason: "must be a JSON string"}
		return "", false
	}
	return s, true
}

func (d *fieldDecoder) address(name string, dst *Address) {
	raw, ok := d.get(name, true)
	if !ok {
		return
	}
	s, ok := d.jsonString(name, raw)
	if !ok {
		return
	}
	a, err := ParseAddress(s)
	if err != nil {
		d.fail(name, err)
		return
	}
	*dst = a
}

func (d *fieldDecoder) hash(name string, dst *Hash, required bool) {
	raw, ok := d.get(name, required)
	if !ok {
		return
	}
	s, ok := d.jsonString(name, raw)
	if !ok {
		return
	}
	h, err := ParseHash(s)
	if err != nil {
		d.fail(name, err)
		return
	}
	*dst = h
}

func (d *fieldDecoder) u256(name string, dst *U256) {
	raw, ok := d.get(name, true)
	if !ok {
		return
	}
	v, err := u256FromJSON(raw)
	if err != nil {
		d.fail(name, err)
		return
	}
	*dst = v
}

func (d *fieldDecoder) u64(name string, dst *uint64) {
	raw, ok := d.get(name, true)
	if !ok {
		return
	}
	v, err := u64FromJSON(raw)
	if err != nil {
		d.fail(name, err)
		return
	}
	*dst = v
}

func (d *fieldDecoder) u8(name string, dst *uint8) {
	raw, ok := d.get(name, true)
	if !ok {
		return
	}
	v, err := u64FromJSON(raw)
	if err == nil && v > 255 {
		err = &FieldError{Reason: "above 255 (uint8)"}
	}
	if err != nil {
		d.fail(name, err)
		return
	}
	*dst = uint8(v)
}

func (d *fieldDecoder) str(name string, dst *string) {
	raw, ok := d.get(name, false)
	if !ok {
		return
	}
	if s, ok := d.jsonString(name, raw); ok {
		*dst = s
	}
}
