package fourmica

import (
	"strconv"
	"sync"

	"github.com/ethereum/go-ethereum/crypto"
)

// Type strings as hashed (EIP-712 encodeType); the struct names are Core's sol! names.
const (
	DomainTypeString = "EIP712Domain(string name,string version,uint256 chainId)"
	TypeStringV1     = "SolGuaranteeRequestClaimsV1(address user,address recipient,uint256 tabId,uint256 reqId,uint256 amount,address asset,uint64 timestamp)"
	TypeStringV2     = "SolGuaranteeRequestClaimsV2(address user,address recipient,uint256 tabId,uint256 reqId,uint256 amount,address asset,uint64 timestamp,address validationRegistryAddress,bytes32 validationRequestHash,uint256 validationChainId,address validatorAddress,uint256 validatorAgentId,uint8 minValidationScore,bytes32 validationSubjectHash,bytes32 jobHash,string requiredValidationTag)"
)

// Type hashes: keccak256 of the type strings.
var (
	DomainTypeHash = Hash(crypto.Keccak256Hash([]byte(DomainTypeString)))
	TypeHashV1     = Hash(crypto.Keccak256Hash([]byte(TypeStringV1)))
	TypeHashV2     = Hash(crypto.Keccak256Hash([]byte(TypeStringV2)))
)

// Defaults of Core's EIP-712 domain (env EIP712_NAME, EIP712_VERSION).
const (
	DefaultDomainName    = "4mica"
	DefaultDomainVersion = "1"
)

// Domain is a validated EIP-712 domain {name, version, chainId} with its separator
// precomputed. Take the values from Core's GET /core/public-params. Safe for concurrent use.
type Domain struct {
	name, version string
	chainID       uint64
	separator     Hash
}

// NewDomain validates the domain values and precomputes the separator. The name is
// case-sensitive ("4mica" ≠ "4Mica"); chainID must be non-zero.
func NewDomain(name, version string, chainID uint64) (*Domain, error) {
	if name == "" {
		return nil, &FieldError{Field: "eip712_name", Reason: "empty"}
	}
	if version == "" {
		return nil, &FieldError{Field: "eip712_version", Reason: "empty"}
	}
	if chainID == 0 {
		return nil, &FieldError{Field: "chain_id", Reason: "zero"}
	}
	d := &Domain{name: name, version: version, chainID: chainID}
	var buf [128]byte
	copy(buf[0:32], DomainTypeHash[:])
	copy(buf[32:64], crypto.Keccak256([]byte(name)))
	copy(buf[64:96], crypto.Keccak256([]byte(version)))
	putUint64Word(buf[96:128], chainID)
	d.separator = Hash(crypto.Keccak256Hash(buf[:]))
	return d, nil
}

// Name returns the EIP-712 domain name.
func (d *Domain) Name() string { return d.name }

// Version returns the EIP-712 domain version.
func (d *Domain) Version() string { return d.version }

// ChainID returns the domain chain id.
func (d *Domain) ChainID() uint64 { return d.chainID }

// Separator returns the EIP-712 domain separator.
func (d *Domain) Separator() Hash { return d.separator }

// hasher is a pooled go-ethereum keccak state with scratch buffers, so digests do not allocate.
type hasher struct {
	st  crypto.KeccakState
	buf []byte
	out [32]byte
}

var hasherPool = sync.Pool{New: func() any {
	return &hasher{st: crypto.NewKeccakState(), buf: make([]byte, 0, 1024)}
}}

func getHasher() *hasher { return hasherPool.Get().(*hasher) }

func putHasher(h *hasher) {
	if cap(h.buf) > 64<<10 { // do not keep huge tag buffers alive
		h.buf = make([]byte, 0, 1024)
	}
	hasherPool.Put(h)
}

// sum hashes data (which may alias h.buf).
func (h *hasher) sum(data []byte) Hash {
	h.st.Reset()
	h.st.Write(data)
	h.st.Read(h.out[:])
	return Hash(h.out)
}

func (h *hasher) sumString(s string) Hash {
	h.buf = append(h.buf[:0], s...)
	return h.sum(h.buf)
}

// grow returns h.buf resized to n bytes (contents unspecified).
func (h *hasher) grow(n int) []byte {
	if cap(h.buf) < n {
		h.buf = make([]byte, n, n+n/4)
	}
	return h.buf[:n]
}

func putUint64Word(w []byte, v uint64) {
	clear(w[:24])
	for i := 0; i < 8; i++ {
		w[31-i] = byte(v >> (8 * i))
	}
}

func putAddressWord(w []byte, a *Address) {
	clear(w[:12])
	copy(w[12:32], a[:])
}

// putV1Words writes the 7 ABI words of the V1 fields (user, recipient, tabId, reqId, amount,
// asset, timestamp) into w[0:224]. Shared by EIP-712 hashStruct and EIP-191 abi.encode.
func putV1Words(w []byte, c *ClaimsV1) {
	_ = w[223]
	putAddressWord(w[0:32], &c.User)
	putAddressWord(w[32:64], &c.Recipient)
	copy(w[64:96], c.TabID[:])
	copy(w[96:128], c.ReqID[:])
	copy(w[128:160], c.Amount[:])
	putAddressWord(w[160:192], &c.Asset)
	putUint64Word(w[192:224], c.Timestamp)
}

// putV2Words writes the first 15 ABI words of the V2 fields into w[0:480]; the 16th
// (requiredValidationTag) differs between EIP-712 (keccak of the string) and abi.encode (offset).
func putV2Words(w []byte, c *ClaimsV2) {
	_ = w[479]
	putV1Words(w[0:224], &c.ClaimsV1)
	putAddressWord(w[224:256], &c.ValidationRegistry)
	copy(w[256:288], c.ValidationRequestHash[:])
	putUint64Word(w[288:320], c.ValidationChainID)
	putAddressWord(w[320:352], &c.Validator)
	copy(w[352:384], c.ValidatorAgentID[:])
	putUint64Word(w[384:416], uint64(c.MinValidationScore))
	copy(w[416:448], c.ValidationSubjectHash[:])
	copy(w[448:480], c.JobHash[:])
}

// StructHashV1 returns EIP-712 hashStruct(SolGuaranteeRequestClaimsV1).
func StructHashV1(c *ClaimsV1) Hash {
	h := getHasher()
	defer putHasher(h)
	return h.structV1(c)
}

// StructHashV2 returns EIP-712 hashStruct(SolGuaranteeRequestClaimsV2).
func StructHashV2(c *ClaimsV2) Hash {
	h := getHasher()
	defer putHasher(h)
	return h.structV2(c)
}

// encodeDataV1 writes EIP-712 encodeData (typeHash ‖ 7 words) into b[0:256].
func encodeDataV1(b []byte, c *ClaimsV1) {
	copy(b[0:32], TypeHashV1[:])
	putV1Words(b[32:256], c)
}

// encodeDataV2 writes EIP-712 encodeData (typeHash ‖ 16 words) into b[0:544]; tagHash is
// keccak256 of the UTF-8 tag.
func encodeDataV2(b []byte, c *ClaimsV2, tagHash *Hash) {
	copy(b[0:32], TypeHashV2[:])
	putV2Words(b[32:512], c)
	copy(b[512:544], tagHash[:])
}

func (h *hasher) structV1(c *ClaimsV1) Hash {
	b := h.grow(256)
	encodeDataV1(b, c)
	return h.sum(b)
}

func (h *hasher) structV2(c *ClaimsV2) Hash {
	tag := h.sumString(c.RequiredValidationTag)
	b := h.grow(544)
	encodeDataV2(b, c, &tag)
	return h.sum(b)
}

func (h *hasher) typed(sep *Hash, structHash Hash) Hash {
	b := h.grow(66)
	b[0], b[1] = 0x19, 0x01
	copy(b[2:34], sep[:])
	copy(b[34:66], structHash[:])
	return h.sum(b)
}

// abiLenV2 is the length of abi.encode(SolGuaranteeRequestClaimsV2) for a tag of n bytes.
func abiLenV2(n int) int { return 32 + 16*32 + 32 + (n+31)/32*32 }

// EncodeEIP191Data returns abi.encode(struct) exactly as Core's EIP-191 scheme signs it:
// 224 bytes for V1; for V2 the tuple offset word 0x20, the 16 head words (tag offset 0x200),
// the tag length and the UTF-8 tag bytes zero-padded to 32.
func EncodeEIP191Data(c Claims) ([]byte, error) {
	if err := c.valid(); err != nil {
		return nil, err
	}
	if c.Version == V1 {
		b := make([]byte, 224)
		putV1Words(b, c.V1)
		return b, nil
	}
	b := make([]byte, abiLenV2(len(c.V2.RequiredValidationTag)))
	putEIP191V2(b, c.V2)
	return b, nil
}

func putEIP191V2(b []byte, c *ClaimsV2) {
	putUint64Word(b[0:32], 0x20)
	putV2Words(b[32:512], c)
	putUint64Word(b[512:544], 0x200)
	putUint64Word(b[544:576], uint64(len(c.RequiredValidationTag)))
	n := copy(b[576:], c.RequiredValidationTag)
	clear(b[576+n:])
}

const eip191Prefix = "\x19Ethereum Signed Message:\n"

// eip191V1 hashes prefix ‖ "224" ‖ 224 data bytes.
func (h *hasher) eip191V1(c *ClaimsV1) Hash {
	const pl = len(eip191Prefix) + 3
	b := h.grow(pl + 224)
	copy(b, eip191Prefix+"224")
	putV1Words(b[pl:], c)
	return h.sum(b)
}

func (h *hasher) eip191V2(c *ClaimsV2) Hash {
	n := abiLenV2(len(c.RequiredValidationTag))
	b := h.grow(len(eip191Prefix) + 20 + n)
	b = append(b[:0], eip191Prefix...)
	b = strconv.AppendInt(b, int64(n), 10)
	pl := len(b)
	b = b[:pl+n]
	putEIP191V2(b[pl:], c)
	return h.sum(b)
}

// DigestV1 returns the digest Core verifies for V1 claims under scheme. It does not allocate.
func (d *Domain) DigestV1(c *ClaimsV1, scheme Scheme) (Hash, error) {
	h := getHasher()
	var out Hash
	switch scheme {
	case SchemeEIP712:
		out = h.typed(&d.separator, h.structV1(c))
	case SchemeEIP191:
		out = h.eip191V1(c)
	default:
		putHasher(h)
		return Hash{}, &FieldError{Field: "scheme", Reason: "unknown scheme " + strconv.Quote(string(scheme))}
	}
	putHasher(h)
	return out, nil
}

// DigestV2 returns the digest Core verifies for V2 claims under scheme. It hashes the claims
// as given; call ClaimsV2.Check first to reject non-canonical validation hashes.
func (d *Domain) DigestV2(c *ClaimsV2, scheme Scheme) (Hash, error) {
	h := getHasher()
	var out Hash
	switch scheme {
	case SchemeEIP712:
		out = h.typed(&d.separator, h.structV2(c))
	case SchemeEIP191:
		out = h.eip191V2(c)
	default:
		putHasher(h)
		return Hash{}, &FieldError{Field: "scheme", Reason: "unknown scheme " + strconv.Quote(string(scheme))}
	}
	putHasher(h)
	return out, nil
}

// Digest returns the digest Core verifies for claims of either version under scheme.
func (d *Domain) Digest(c Claims, scheme Scheme) (Hash, error) {
	if err := c.valid(); err != nil {
		return Hash{}, err
	}
	if c.Version == V1 {
		return d.DigestV1(c.V1, scheme)
	}
	return d.DigestV2(c.V2, scheme)
}
