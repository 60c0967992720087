package fourmica

import (
	"strconv"
	"unicode/utf8"

	"github.com/ethereum/go-ethereum/crypto"
)

// Binding domain strings of the V2 validation hashes (Core crates/rpc/src/guarantee/validation.rs).
const (
	SubjectBindingDomain = "4MICA_VALIDATION_SUBJECT_V1"
	RequestBindingDomain = "4MICA_VALIDATION_REQUEST_V2"
	// CanonicalizationVersion is the only public-params validation_hash_canonicalization_version
	// Core runs with.
	CanonicalizationVersion = RequestBindingDomain
)

var (
	subjectDomainHash = Hash(crypto.Keccak256Hash([]byte(SubjectBindingDomain)))
	requestDomainHash = Hash(crypto.Keccak256Hash([]byte(RequestBindingDomain)))
)

// ValidationSubjectHash returns keccak256(abi.encode(keccak256("4MICA_VALIDATION_SUBJECT_V1"),
// tabId, reqId, user, recipient, amount, asset, uint64 timestamp)).
func ValidationSubjectHash(c *ClaimsV1) Hash {
	h := getHasher()
	defer putHasher(h)
	b := h.grow(256)
	copy(b[0:32], subjectDomainHash[:])
	copy(b[32:64], c.TabID[:])
	copy(b[64:96], c.ReqID[:])
	putAddressWord(b[96:128], &c.User)
	putAddressWord(b[128:160], &c.Recipient)
	copy(b[160:192], c.Amount[:])
	putAddressWord(b[192:224], &c.Asset)
	putUint64Word(b[224:256], c.Timestamp)
	return h.sum(b)
}

// ValidationRequestHash returns keccak256(abi.encode(keccak256("4MICA_VALIDATION_REQUEST_V2"),
// validationChainId, registry, validator, agentId, c.ValidationSubjectHash, uint8 minScore,
// keccak256(tag), jobHash)). It uses the subject hash stored in c.
func ValidationRequestHash(c *ClaimsV2) Hash {
	h := getHasher()
	defer putHasher(h)
	tag := h.sumString(c.RequiredValidationTag)
	b := h.grow(288)
	copy(b[0:32], requestDomainHash[:])
	putUint64Word(b[32:64], c.ValidationChainID)
	putAddressWord(b[64:96], &c.ValidationRegistry)
	putAddressWord(b[96:128], &c.Validator)
	copy(b[128:160], c.ValidatorAgentID[:])
	copy(b[160:192], c.ValidationSubjectHash[:])
	putUint64Word(b[192:224], uint64(c.MinValidationScore))
	copy(b[224:256], tag[:])
	copy(b[256:288], c.JobHash[:])
	return h.sum(b)
}

// Fill sets the canonical subject hash, then the canonical request hash (in that order).
func (c *ClaimsV2) Fill() {
	c.ValidationSubjectHash = ValidationSubjectHash(&c.ClaimsV1)
	c.ValidationRequestHash = ValidationRequestHash(c)
}

// Check applies Core's V2 policy-binding checks: min_validation_score in 1..100, job_hash
// non-zero, the tag valid UTF-8, both validation hashes canonical, and, when chainID is non-zero,
// validation_chain_id == chainID. (The trusted-registry check needs Core's public params and is
// left to the caller.)
func (c *ClaimsV2) Check(chainID uint64) error {
	if c.MinValidationScore < 1 || c.MinValidationScore > 100 {
		return &FieldError{Field: "min_validation_score", Reason: "must be in 1..100, got " + strconv.Itoa(int(c.MinValidationScore))}
	}
	if c.JobHash.IsZero() {
		return &FieldError{Field: "job_hash", Reason: "must not be zero"}
	}
	if !utf8.ValidString(c.RequiredValidationTag) {
		// JSON would carry U+FFFD instead, so Core would hash different bytes than we sign.
		return &FieldError{Field: "required_validation_tag", Reason: "not valid UTF-8"}
	}
	if want := ValidationSubjectHash(&c.ClaimsV1); c.ValidationSubjectHash != want {
		return &FieldError{Field: "validation_subject_hash", Reason: "not canonical (want " + want.Hex() + ")"}
	}
	if want := ValidationRequestHash(c); c.ValidationRequestHash != want {
		return &FieldError{Field: "validation_request_hash", Reason: "not canonical (want " + want.Hex() + ")"}
	}
	if chainID != 0 && c.ValidationChainID != chainID {
		return &FieldError{Field: "validation_chain_id", Reason: "must equal chain id " + strconv.FormatUint(chainID, 10) + ", got " + strconv.FormatUint(c.ValidationChainID, 10)}
	}
	return nil
}
