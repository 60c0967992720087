package fourmica

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
)

// x402 names of the 4mica-credit scheme.
const (
	CreditScheme                = "4mica-credit"      // x402 scheme name
	HeaderPaymentRequired       = "PAYMENT-REQUIRED"  // v2: base64 requirements in the 402 response
	HeaderXPayment              = "X-PAYMENT"         // v1: base64 payment envelope
	HeaderPaymentSignature      = "PAYMENT-SIGNATURE" // v2: base64 payment envelope
	HeaderPaymentResponse       = "PAYMENT-RESPONSE"  // v2 settlement reply
	HeaderXPaymentResponse      = "X-PAYMENT-RESPONSE"
	maxRequirementsHeaderLength = 64 << 10
)

// PaymentRequired is a parsed x402 402 answer (v1 JSON body or v2 PAYMENT-REQUIRED header).
type PaymentRequired struct {
	X402Version int                   // 1 or 2
	Error       string                // server's error text, may be empty
	Resource    json.RawMessage       // v2 resource object {url, description, mimeType}, verbatim; nil for v1
	Accepts     []PaymentRequirements // every option, in order; only 4mica-credit ones are parsed in full
}

// PaymentRequirements is one entry of "accepts". For 4mica-credit entries every field below is
// parsed and validated; for other schemes only Scheme, Network and Raw are set.
type PaymentRequirements struct {
	Scheme            string
	Network           string            // CAIP-2, e.g. "eip155:84532"
	ChainID           uint64            // from an "eip155:<n>" network, else 0
	Amount            U256              // maxAmountRequired (v1) or amount (v2)
	PayTo             Address           // the recipient
	Asset             Address           // zero = ETH
	MaxTimeoutSeconds uint64            // 0 when absent
	Resource          string            // v1 "resource" URL, may be empty
	TabEndpoint       string            // extra.tabEndpoint (required)
	Policy            *ValidationPolicy // V2 validation policy from extra, nil when absent
	Raw               json.RawMessage   // the entry exactly as received (echoed as v2 "accepted")
}

// ValidationPolicy is the V2 validation policy a resource server puts in extra.
type ValidationPolicy struct {
	Registry  Address // validationRegistryAddress
	Validator Address // validatorAddress
	AgentID   U256    // validatorAgentId
	MinScore  uint8   // minValidationScore, 1..100
	JobHash   Hash    // jobHash, non-zero
	Tag       string  // requiredValidationTag, may be empty
	ChainID   uint64  // validationChainId; 0 when absent (then the network's chain id is used)
}

// ParseRequirementsV1 parses the JSON body of an x402 v1 402 response
// ({x402Version:1, error, accepts:[…]}). It fails when no entry is 4mica-credit or a
// 4mica-credit entry is malformed (e.g. has no extra.tabEndpoint).
func ParseRequirementsV1(body []byte) (*PaymentRequired, error) {
	return parseRequired(body, 1)
}

// ParseRequirementsV2 parses the value of the PAYMENT-REQUIRED header (base64 JSON
// {x402Version:2, error?, resource, accepts:[…]}). Same checks as ParseRequirementsV1.
func ParseRequirementsV2(header string) (*PaymentRequired, error) {
	header = strings.TrimSpace(header)
	if len(header) > maxRequirementsHeaderLength {
		return nil, &FieldError{Field: HeaderPaymentRequired, Reason: "too long"}
	}
	raw, err := base64.StdEncoding.DecodeString(header)
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(header); err != nil {
			return nil, &FieldError{Field: HeaderPaymentRequired, Reason: "not base64"}
		}
	}
	return parseRequired(raw, 2)
}

func parseRequired(body []byte, version int) (*PaymentRequired, error) {
	fields, err := readObject(body, "payment required")
	if err != nil {
		return nil, err
	}
	pr := &PaymentRequired{}
	var v int
	if raw, ok := fields["x402Version"]; !ok || json.Unmarshal(raw, &v) != nil {
		return nil, &FieldError{Field: "x402Version", Reason: "missing or not an integer"}
	}
	if v != version {
		return nil, &FieldError{Field: "x402Version", Reason: "got " + strconv.Itoa(v) + ", want " + strconv.Itoa(version)}
	}
	pr.X402Version = v
	if raw, ok := fields["error"]; ok {
		_ = json.Unmarshal(raw, &pr.Error) // informational only
	}
	if version == 2 {
		raw, ok := fields["resource"]
		if ok {
			var res map[string]json.RawMessage
			if json.Unmarshal(raw, &res) != nil || res == nil {
				return nil, &FieldError{Field: "resource", Reason: "not an object"}
			}
			pr.Resource = append(json.RawMessage(nil), bytes.TrimSpace(raw)...)
		}
	}
	var accepts []json.RawMessage
	if raw, ok := fields["accepts"]; !ok || json.Unmarshal(raw, &accepts) != nil {
		return nil, &FieldError{Field: "accepts", Reason: "missing or not an array"}
	}
	found := false
	for i, raw := range accepts {
		prefix := "accepts[" + strconv.Itoa(i) + "]"
		r, err := parseRequirement(raw, version)
		if err != nil {
			return nil, prefixField(prefix, err)
		}
		if r.Scheme == CreditScheme {
			found = true
		}
		pr.Accepts = append(pr.Accepts, *r)
	}
	if !found {
		return nil, &FieldError{Field: "accepts", Reason: "no " + CreditScheme + " option"}
	}
	return pr, nil
}

func parseRequirement(raw json.RawMessage, version int) (*PaymentRequirements, error) {
	fields, err := readObject(raw, "entry")
	if err != nil {
		return nil, err
	}
	r := &PaymentRequirements{Raw: append(json.RawMessage(nil), bytes.TrimSpace(raw)...)}
	d := fieldDecoder{fields: fields}
	d.str("scheme", &r.Scheme)
	d.str("network", &r.Network)
	if d.err != nil {
		return nil, d.err
	}
	if r.Scheme != CreditScheme {
		return r, nil
	}
	if r.Network == "" {
		return nil, &FieldError{Field: "network", Reason: "missing"}
	}
	if id, ok := strings.CutPrefix(r.Network, "eip155:"); ok {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil || n == 0 {
			return nil, &FieldError{Field: "network", Reason: "bad eip155 chain id"}
		}
		r.ChainID = n
	}
	amountField := "maxAmountRequired"
	if version == 2 {
		amountField = "amount"
	}
	d.u256(amountField, &r.Amount)
	d.address("payTo", &r.PayTo)
	d.address("asset", &r.Asset)
	if raw, ok := d.get("maxTimeoutSeconds", false); ok {
		if v, err := u64FromJSON(raw); err != nil {
			d.fail("maxTimeoutSeconds", err)
		} else {
			r.MaxTimeoutSeconds = v
		}
	}
	if version == 1 {
		d.str("resource", &r.Resource)
	}
	if d.err != nil {
		return nil, d.err
	}
	extraRaw, ok := fields["extra"]
	if !ok {
		return nil, &FieldError{Field: "extra.tabEndpoint", Reason: "missing"}
	}
	if err := r.parseExtra(extraRaw); err != nil {
		return nil, prefixField("extra", err)
	}
	return r, nil
}

func (r *PaymentRequirements) parseExtra(raw json.RawMessage) error {
	fields, err := readObject(raw, "extra")
	if err != nil {
		return err
	}
	// Accept camelCase and snake_case (the facilitator accepts both); camelCase wins.
	alias := func(camel, snake string) string {
		if _, ok := fields[camel]; ok {
			return camel
		}
		if _, ok := fields[snake]; ok {
			fields[camel] = fields[snake]
		}
		return camel
	}
	d := fieldDecoder{fields: fields}
	d.str(alias("tabEndpoint", "tab_endpoint"), &r.TabEndpoint)
	if d.err != nil {
		return d.err
	}
	if r.TabEndpoint == "" {
		return &FieldError{Field: "tabEndpoint", Reason: "missing"}
	}
	if u, err := url.Parse(r.TabEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return &FieldError{Field: "tabEndpoint", Reason: "not an absolute http(s) URL"}
	}
	names := [][2]string{
		{"validationRegistryAddress", "validation_registry_address"},
		{"validatorAddress", "validator_address"},
		{"validatorAgentId", "validator_agent_id"},
		{"minValidationScore", "min_validation_score"},
		{"jobHash", "job_hash"},
		{"requiredValidationTag", "required_validation_tag"},
		{"validationChainId", "validation_chain_id"},
	}
	hasPolicy := false
	for _, n := range names {
		if _, ok := fields[alias(n[0], n[1])]; ok {
			hasPolicy = true
		}
	}
	if !hasPolicy {
		return nil
	}
	p := &ValidationPolicy{}
	d.address("validationRegistryAddress", &p.Registry)
	d.address("validatorAddress", &p.Validator)
	d.u256("validatorAgentId", &p.AgentID)
	if raw, ok := d.get("minValidationScore", true); ok {
		v, err := u256FromJSON(raw)
		n, fits := v.Uint64()
		if err == nil && (!fits || n < 1 || n > 100) {
			err = &FieldError{Reason: "must be in 1..100"}
		}
		if err != nil {
			d.fail("minValidationScore", err)
		}
		p.MinScore = uint8(n)
	}
	d.hash("jobHash", &p.JobHash, true)
	d.str("requiredValidationTag", &p.Tag)
	if raw, ok := d.get("validationChainId", false); ok {
		v, err := u256FromJSON(raw)
		n, fits := v.Uint64()
		if err == nil && !fits {
			err = &FieldError{Reason: "above 2^64-1"}
		}
		if err != nil {
			d.fail("validationChainId", err)
		}
		p.ChainID = n
	}
	if d.err != nil {
		return d.err
	}
	if p.JobHash.IsZero() {
		return &FieldError{Field: "jobHash", Reason: "must not be zero"}
	}
	r.Policy = p
	return nil
}

// Select returns the first 4mica-credit option, restricted to network when it is non-empty.
func (pr *PaymentRequired) Select(network string) (*PaymentRequirements, error) {
	for i := range pr.Accepts {
		r := &pr.Accepts[i]
		if r.Scheme == CreditScheme && (network == "" || r.Network == network) {
			return r, nil
		}
	}
	if network != "" {
		return nil, &FieldError{Field: "accepts", Reason: "no " + CreditScheme + " option for network " + strconv.Quote(network)}
	}
	return nil, &FieldError{Field: "accepts", Reason: "no " + CreditScheme + " option"}
}

// ClaimsVersion is the guarantee version the payer signs for this option (and asks the tab
// endpoint for): V2 when the 402 is x402 v2 and extra carries a validation policy, else V1
// (as @4mica/sdk 1.2.17 does).
func (pr *PaymentRequired) ClaimsVersion(r *PaymentRequirements) Version {
	if pr.X402Version == 2 && r.Policy != nil {
		return V2
	}
	return V1
}

// TabInfo is what the resource server's tab endpoint returned.
type TabInfo struct {
	TabID U256    // tabId
	ReqID U256    // nextReqId (0 when absent)
	User  Address // userAddress; must be the payer
}

// ParseTabResponse parses the tab endpoint's JSON reply: tabId|tab_id (required),
// userAddress|user_address (required), nextReqId|next_req_id|reqId|req_id (default 0).
func ParseTabResponse(body []byte) (TabInfo, error) {
	var t TabInfo
	fields, err := readObject(body, "tab response")
	if err != nil {
		return t, err
	}
	first := func(names ...string) string {
		for _, n := range names {
			if raw, ok := fields[n]; ok && string(bytes.TrimSpace(raw)) != "null" {
				return n
			}
		}
		return names[0]
	}
	d := fieldDecoder{fields: fields}
	d.u256(first("tabId", "tab_id"), &t.TabID)
	d.address(first("userAddress", "user_address"), &t.User)
	if n := first("nextReqId", "next_req_id", "reqId", "req_id"); d.err == nil {
		if _, ok := fields[n]; ok {
			d.u256(n, &t.ReqID)
		}
	}
	return t, d.err
}

// TabRequestBody builds the JSON body POSTed to extra.tabEndpoint:
// {"x402Version", "userAddress", "paymentRequirements", "resource"?}. x402Version is the claims
// version the payer will sign (it pins the tab's guarantee version).
func TabRequestBody(pr *PaymentRequired, r *PaymentRequirements, user Address) []byte {
	b := []byte(`{"x402Version":`)
	b = strconv.AppendInt(b, int64(pr.ClaimsVersion(r)), 10)
	b = append(b, `,"userAddress":"`...)
	b = append(b, user.Hex()...)
	b = append(b, `","paymentRequirements":`...)
	b = append(b, r.Raw...)
	if pr.Resource != nil {
		b = append(b, `,"resource":`...)
		b = append(b, pr.Resource...)
	}
	return append(b, '}')
}

// BuildClaims builds the claims to sign for option r: user = payer, recipient = payTo,
// tab_id/req_id from the tab, amount, asset, timestamp (unix seconds, from the caller's clock).
// V2 claims (see ClaimsVersion) get validation_chain_id from extra.validationChainId or the
// eip155 network, and canonical validation hashes. Zero amounts and a tab of another user are
// rejected.
func BuildClaims(pr *PaymentRequired, r *PaymentRequirements, tab TabInfo, user Address, timestamp uint64) (Claims, error) {
	if r.Scheme != CreditScheme {
		return Claims{}, &FieldError{Field: "scheme", Reason: "option is " + strconv.Quote(r.Scheme) + ", not " + CreditScheme}
	}
	if tab.User != user {
		return Claims{}, &FieldError{Field: "userAddress", Reason: "tab belongs to " + tab.User.Hex() + ", not the payer " + user.Hex()}
	}
	if r.Amount.IsZero() {
		return Claims{}, &FieldError{Field: "amount", Reason: "zero"}
	}
	if timestamp == 0 {
		return Claims{}, &FieldError{Field: "timestamp", Reason: "zero"}
	}
	p := ClaimsV1{
		User: user, Recipient: r.PayTo, TabID: tab.TabID, ReqID: tab.ReqID,
		Amount: r.Amount, Asset: r.Asset, Timestamp: timestamp,
	}
	if pr.ClaimsVersion(r) == V1 {
		return ClaimsOfV1(&p), nil
	}
	pol := r.Policy
	chain := pol.ChainID
	switch {
	case chain == 0:
		chain = r.ChainID
	case r.ChainID != 0 && chain != r.ChainID:
		return Claims{}, &FieldError{Field: "extra.validationChainId", Reason: "differs from the network's chain id"}
	}
	if chain == 0 {
		return Claims{}, &FieldError{Field: "extra.validationChainId", Reason: "missing and the network is not eip155"}
	}
	c := &ClaimsV2{
		ClaimsV1: p, ValidationRegistry: pol.Registry, ValidationChainID: chain,
		Validator: pol.Validator, ValidatorAgentID: pol.AgentID, MinValidationScore: pol.MinScore,
		JobHash: pol.JobHash, RequiredValidationTag: pol.Tag,
	}
	c.Fill()
	if err := c.Check(0); err != nil {
		return Claims{}, err
	}
	return ClaimsOfV2(c), nil
}

// BuildEnvelope returns the header (name and base64 value) carrying the signed request:
// v1 → X-PAYMENT {"x402Version":1,"scheme","network","payload"};
// v2 → PAYMENT-SIGNATURE {"x402Version":2,"accepted","payload","resource"}.
func BuildEnvelope(pr *PaymentRequired, r *PaymentRequirements, req *Request) (name, value string, err error) {
	payload, err := req.MarshalJSON()
	if err != nil {
		return "", "", err
	}
	var b []byte
	switch pr.X402Version {
	case 1:
		b = append(b, `{"x402Version":1,"scheme":`...)
		b = appendJSONString(b, r.Scheme)
		b = append(b, `,"network":`...)
		b = appendJSONString(b, r.Network)
		b = append(b, `,"payload":`...)
		b = append(b, payload...)
		b = append(b, '}')
		name = HeaderXPayment
	case 2:
		b = append(b, `{"x402Version":2,"accepted":`...)
		b = append(b, r.Raw...)
		b = append(b, `,"payload":`...)
		b = append(b, payload...)
		if pr.Resource != nil {
			b = append(b, `,"resource":`...)
			b = append(b, pr.Resource...)
		}
		b = append(b, '}')
		name = HeaderPaymentSignature
	default:
		return "", "", &FieldError{Field: "x402Version", Reason: "unsupported " + strconv.Itoa(pr.X402Version)}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return "", "", &FieldError{Field: "envelope", Reason: "malformed JSON"}
	}
	return name, base64.StdEncoding.EncodeToString(compact.Bytes()), nil
}

// Envelope is a decoded X-PAYMENT / PAYMENT-SIGNATURE header (for servers, tests and audit).
type Envelope struct {
	X402Version int
	Scheme      string          // v1 top-level scheme
	Network     string          // v1 top-level network
	Accepted    json.RawMessage // v2 chosen requirements
	Resource    json.RawMessage // v2 resource
	Payload     *Request
}

// DecodeEnvelope decodes a base64 payment header value.
func DecodeEnvelope(value string) (*Envelope, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(value))
	if err != nil {
		return nil, &FieldError{Field: "envelope", Reason: "not base64"}
	}
	fields, err := readObject(raw, "envelope")
	if err != nil {
		return nil, err
	}
	e := &Envelope{}
	if r, ok := fields["x402Version"]; !ok || json.Unmarshal(r, &e.X402Version) != nil {
		return nil, &FieldError{Field: "x402Version", Reason: "missing or not an integer"}
	}
	d := fieldDecoder{fields: fields}
	d.str("scheme", &e.Scheme)
	d.str("network", &e.Network)
	if d.err != nil {
		return nil, d.err
	}
	e.Accepted = fields["accepted"]
	e.Resource = fields["resource"]
	p, ok := fields["payload"]
	if !ok {
		return nil, &FieldError{Field: "payload", Reason: "missing"}
	}
	if e.Payload, err = DecodeRequest(p); err != nil {
		return nil, prefixField("payload", err)
	}
	return e, nil
}
