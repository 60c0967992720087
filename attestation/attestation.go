// Package attestation proves to a remote verifier which TPM state a signerd wallet key is sealed
// to: a TPM2_Quote by an attestation key (ECC P-256, restricted, signing) over the boot PCRs and
// the key's sealing PCRs, whose qualifying data binds the verifier's nonce, the wallet's public key
// and the sealing policy digest, wrapped in a deterministic CBOR document, plus its verifier.
//
// What a verified document says: "a TPM holding this attestation key quoted these PCR values
// in answer to your nonce, for this wallet key sealed under this policy, and that policy is the
// PolicyPCR of the quoted values (so the TPM would unseal the key in this state)". It does not
// by itself prove the attestation key belongs to a genuine TPM: pin the AK at enrolment, or
// certify it against the TPM's endorsement key (not done here).
package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/ethereum/go-ethereum/crypto"
	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Version is the document format version.
const Version = 1

// BootPCRs are always quoted (firmware, Secure Boot state, boot loader), besides the key's
// sealing PCRs.
var BootPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

// Errors. Verify wraps one of them; the wrapped text says what did not match.
var (
	ErrMalformed      = errors.New("attestation: malformed document")
	ErrNonce          = errors.New("attestation: nonce does not match")
	ErrAK             = errors.New("attestation: attestation key not acceptable")
	ErrSignature      = errors.New("attestation: quote signature does not verify")
	ErrQualifyingData = errors.New("attestation: quote is not bound to this nonce, wallet key and policy")
	ErrPCRDigest      = errors.New("attestation: PCR values do not match the quoted digest")
	ErrPolicy         = errors.New("attestation: sealing policy is not the PolicyPCR of the quoted PCRs")
)

// PCR is one sha256 PCR value at quote time.
type PCR struct {
	Index int    `cbor:"1,keyasint"`
	Value []byte `cbor:"2,keyasint"`
}

// Document is an attestation of one wallet key. Encode it with Marshal (deterministic CBOR).
type Document struct {
	Version       int    `cbor:"1,keyasint"`
	Nonce         []byte `cbor:"2,keyasint"`           // the verifier's challenge
	WalletPubKey  []byte `cbor:"3,keyasint"`           // uncompressed secp256k1, 65 bytes
	WalletAddress []byte `cbor:"4,keyasint"`           // 20 bytes
	SealPolicy    []byte `cbor:"5,keyasint,omitempty"` // PolicyPCR digest the key is sealed to; empty: none
	SealPCRs      []int  `cbor:"6,keyasint,omitempty"` // sha256 PCRs of SealPolicy
	AKPublic      []byte `cbor:"7,keyasint"`           // TPMT_PUBLIC of the attestation key
	PCRs          []PCR  `cbor:"8,keyasint"`           // quoted sha256 PCRs, increasing index
	Quoted        []byte `cbor:"9,keyasint"`           // TPMS_ATTEST as signed by the TPM
	Signature     []byte `cbor:"10,keyasint"`          // TPMT_SIGNATURE (ECDSA P-256, SHA-256)
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	if decMode, err = (cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		MaxArrayElements:  64,
		MaxMapPairs:       32,
		MaxNestedLevels:   4,
		IndefLength:       cbor.IndefLengthForbidden,
	}).DecMode(); err != nil {
		panic(err)
	}
}

// Marshal encodes d as deterministic (core deterministic encoding) CBOR.
func (d *Document) Marshal() ([]byte, error) { return encMode.Marshal(d) }

// Unmarshal decodes a document strictly (no unknown or duplicate keys) and requires it to be in
// deterministic encoding, so one document has exactly one byte form.
func Unmarshal(b []byte) (*Document, error) {
	var d Document
	if err := decMode.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	again, err := d.Marshal()
	if err != nil || !bytes.Equal(again, b) {
		return nil, fmt.Errorf("%w: not in deterministic encoding", ErrMalformed)
	}
	return &d, nil
}

// QualifyingData is sha256(nonce ‖ wallet public key ‖ sealing policy digest).
func QualifyingData(nonce, walletPub, policy []byte) []byte {
	h := sha256.New()
	h.Write(nonce)
	h.Write(walletPub)
	h.Write(policy)
	return h.Sum(nil)
}

// PolicyPCRDigest computes the policy digest TPM2_PolicyPCR produces from a fresh sha256 policy
// session for the given PCRs and values (TPM 2.0 Part 3, 23.7):
// sha256(0³² ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ sha256(values in selection order)).
func PolicyPCRDigest(pcrs []int, values [][]byte) []byte {
	pd := sha256.New()
	for _, v := range values {
		pd.Write(v)
	}
	var cc [4]byte
	binary.BigEndian.PutUint32(cc[:], uint32(tpm2.TPMCCPolicyPCR))
	h := sha256.New()
	h.Write(make([]byte, 32))
	h.Write(cc[:])
	h.Write(tpm2.Marshal(Selection(pcrs)))
	h.Write(pd.Sum(nil))
	return h.Sum(nil)
}

// Selection is the sha256 TPML_PCR_SELECTION of pcrs.
func Selection(pcrs []int) tpm2.TPMLPCRSelection {
	idx := make([]uint, len(pcrs))
	for i, p := range pcrs {
		idx[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(idx...),
	}}}
}

// akTemplate is the attestation key: an ECC P-256 restricted signing primary (ECDSA-SHA256) in
// the endorsement hierarchy, so the same TPM derives the same AK every time.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, Restricted: true, SignEncrypt: true, NoDA: true},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// Input is what Quote attests.
type Input struct {
	Nonce        []byte // verifier's challenge, 8..64 bytes
	WalletPubKey []byte // uncompressed secp256k1 public key, 65 bytes
	SealPolicy   []byte // the key's PolicyPCR digest (empty: not PCR-bound)
	SealPCRs     []int  // the key's sealing PCRs
}

// Quote creates the attestation key, quotes BootPCRs ∪ SealPCRs over in's qualifying data,
// reads the PCR values, flushes the key and returns the document. t must be used by no one else
// meanwhile (the caller serialises its TPM connection).
func Quote(t transport.TPM, in Input) (*Document, error) {
	if len(in.Nonce) < 8 || len(in.Nonce) > 64 {
		return nil, fmt.Errorf("attestation: nonce must be 8..64 bytes")
	}
	if len(in.WalletPubKey) != 65 || in.WalletPubKey[0] != 4 {
		return nil, fmt.Errorf("attestation: wallet public key must be 65 bytes uncompressed")
	}
	pcrs := slices.Clone(BootPCRs)
	for _, p := range in.SealPCRs {
		if !slices.Contains(pcrs, p) {
			pcrs = append(pcrs, p)
		}
	}
	slices.Sort(pcrs)
	ak, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(akTemplate)}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("attestation: create AK: %w", err)
	}
	defer func() { _, _ = (tpm2.FlushContext{FlushHandle: ak.ObjectHandle}).Execute(t) }()
	akPub, err := ak.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("attestation: AK public: %w", err)
	}
	qd := QualifyingData(in.Nonce, in.WalletPubKey, in.SealPolicy)
	// The PCRs can move between the quote and the read: retry until they agree.
	for attempt := 0; attempt < 3; attempt++ {
		q, err := tpm2.Quote{
			SignHandle:     tpm2.NamedHandle{Handle: ak.ObjectHandle, Name: ak.Name},
			QualifyingData: tpm2.TPM2BData{Buffer: qd},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      Selection(pcrs),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("attestation: quote: %w", err)
		}
		values, err := readPCRs(t, pcrs)
		if err != nil {
			return nil, err
		}
		d := &Document{
			Version:       Version,
			Nonce:         slices.Clone(in.Nonce),
			WalletPubKey:  slices.Clone(in.WalletPubKey),
			WalletAddress: crypto.Keccak256(in.WalletPubKey[1:])[12:],
			SealPolicy:    slices.Clone(in.SealPolicy),
			SealPCRs:      slices.Clone(in.SealPCRs),
			AKPublic:      tpm2.Marshal(akPub),
			Quoted:        q.Quoted.Bytes(),
			Signature:     tpm2.Marshal(&q.Signature),
		}
		for i, p := range pcrs {
			d.PCRs = append(d.PCRs, PCR{Index: p, Value: values[i]})
		}
		if err := checkPCRDigest(d); err == nil {
			return d, nil
		}
	}
	return nil, errors.New("attestation: PCRs kept changing during the quote")
}

// readPCRs reads sha256 PCR values in index order (the TPM returns at most 8 per read).
func readPCRs(t transport.TPM, pcrs []int) ([][]byte, error) {
	out := make([][]byte, 0, len(pcrs))
	for start := 0; start < len(pcrs); start += 8 {
		chunk := pcrs[start:min(start+8, len(pcrs))]
		rsp, err := tpm2.PCRRead{PCRSelectionIn: Selection(chunk)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("attestation: PCRRead: %w", err)
		}
		if len(rsp.PCRValues.Digests) != len(chunk) {
			return nil, fmt.Errorf("attestation: PCRRead returned %d values for %d PCRs", len(rsp.PCRValues.Digests), len(chunk))
		}
		for _, d := range rsp.PCRValues.Digests {
			out = append(out, slices.Clone(d.Buffer))
		}
	}
	return out, nil
}

// Result is what a verified document establishes.
type Result struct {
	WalletAddress [20]byte
	AKPublic      *ecdsa.PublicKey
	PCRs          map[int][]byte
	SealPCRs      []int
	SealPolicy    []byte
	AKPinned      bool // the AK matched the pinned key given to Verify
}

// Verify checks an encoded document against the verifier's nonce. pinnedAK, if not nil, is the
// attestation key recorded at enrolment; without it the AK is only checked to be a restricted
// P-256 signing key, which proves consistency, not that the key lives in a genuine TPM.
func Verify(doc []byte, nonce []byte, pinnedAK *ecdsa.PublicKey) (res *Result, err error) {
	defer func() {
		// go-tpm's (un)marshalling may panic on hostile input; a document never crashes the verifier.
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%w: %v", ErrMalformed, r)
		}
	}()
	d, err := Unmarshal(doc)
	if err != nil {
		return nil, err
	}
	if d.Version != Version {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, d.Version)
	}
	if !bytes.Equal(d.Nonce, nonce) || len(nonce) == 0 {
		return nil, ErrNonce
	}
	if len(d.WalletPubKey) != 65 || d.WalletPubKey[0] != 4 {
		return nil, fmt.Errorf("%w: wallet public key", ErrMalformed)
	}
	if _, err := crypto.UnmarshalPubkey(d.WalletPubKey); err != nil {
		return nil, fmt.Errorf("%w: wallet public key not on secp256k1", ErrMalformed)
	}
	if !bytes.Equal(d.WalletAddress, crypto.Keccak256(d.WalletPubKey[1:])[12:]) {
		return nil, fmt.Errorf("%w: wallet address is not the public key's", ErrMalformed)
	}

	// The attestation key.
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](d.AKPublic)
	if err != nil || !bytes.Equal(tpm2.Marshal(akPub), d.AKPublic) {
		return nil, fmt.Errorf("%w: AK public area", ErrMalformed)
	}
	a := akPub.ObjectAttributes
	if akPub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("%w: name algorithm is not SHA-256", ErrAK)
	}
	if akPub.Type != tpm2.TPMAlgECC || !a.Restricted || !a.SignEncrypt || !a.FixedTPM || !a.SensitiveDataOrigin || a.Decrypt {
		return nil, fmt.Errorf("%w: not a restricted, fixedTPM ECC signing key", ErrAK)
	}
	pk, err := tpm2.Pub(*akPub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAK, err)
	}
	ak, ok := pk.(*ecdsa.PublicKey)
	if !ok || ak.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: not P-256", ErrAK)
	}
	if pinnedAK != nil && !ak.Equal(pinnedAK) {
		return nil, fmt.Errorf("%w: not the pinned attestation key", ErrAK)
	}

	// The signature over the quoted bytes.
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](d.Signature)
	if err != nil || !bytes.Equal(tpm2.Marshal(sig), d.Signature) {
		return nil, fmt.Errorf("%w: signature encoding", ErrMalformed)
	}
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("%w: signature algorithm %v", ErrSignature, sig.SigAlg)
	}
	es, err := sig.Signature.ECDSA()
	if err != nil || es.Hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("%w: not ECDSA-SHA256", ErrSignature)
	}
	digest := sha256.Sum256(d.Quoted)
	r := new(big.Int).SetBytes(es.SignatureR.Buffer)
	s := new(big.Int).SetBytes(es.SignatureS.Buffer)
	if !ecdsa.Verify(ak, digest[:], r, s) {
		return nil, ErrSignature
	}

	// What the TPM signed.
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](d.Quoted)
	if err != nil || !bytes.Equal(tpm2.Marshal(att), d.Quoted) {
		return nil, fmt.Errorf("%w: quoted TPMS_ATTEST", ErrMalformed)
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("%w: not a TPM-generated quote", ErrMalformed)
	}
	qn, err := primaryQualifiedName(akPub)
	if err != nil || !bytes.Equal(att.QualifiedSigner.Buffer, qn) {
		return nil, fmt.Errorf("%w: the quote was not signed by this endorsement-hierarchy primary", ErrAK)
	}
	if !bytes.Equal(att.ExtraData.Buffer, QualifyingData(d.Nonce, d.WalletPubKey, d.SealPolicy)) {
		return nil, ErrQualifyingData
	}
	if err := checkPCRDigest(d); err != nil {
		return nil, err
	}

	// The sealing policy must be what PolicyPCR gives for the quoted values of the sealing PCRs.
	res = &Result{AKPublic: ak, PCRs: map[int][]byte{}, SealPCRs: slices.Clone(d.SealPCRs),
		SealPolicy: slices.Clone(d.SealPolicy), AKPinned: pinnedAK != nil}
	copy(res.WalletAddress[:], d.WalletAddress)
	for _, p := range d.PCRs {
		res.PCRs[p.Index] = p.Value
	}
	if len(d.SealPCRs) > 0 || len(d.SealPolicy) > 0 {
		vals := make([][]byte, 0, len(d.SealPCRs))
		for i, p := range d.SealPCRs {
			v, ok := res.PCRs[p]
			if !ok || (i > 0 && p <= d.SealPCRs[i-1]) {
				return nil, fmt.Errorf("%w: sealing PCRs %v not quoted in order", ErrPolicy, d.SealPCRs)
			}
			vals = append(vals, v)
		}
		if !bytes.Equal(PolicyPCRDigest(d.SealPCRs, vals), d.SealPolicy) {
			return nil, ErrPolicy
		}
	}
	return res, nil
}

// primaryQualifiedName is the qualified name of a primary object in the endorsement hierarchy
// (TPM 2.0 Part 1, 16.6): nameAlg ‖ H(handle of TPM_RH_ENDORSEMENT ‖ Name).
func primaryQualifiedName(pub *tpm2.TPMTPublic) ([]byte, error) {
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, err
	}
	var h4 [4]byte
	binary.BigEndian.PutUint32(h4[:], uint32(tpm2.TPMRHEndorsement))
	sum := sha256.Sum256(append(h4[:], name.Buffer...))
	return append([]byte{0x00, 0x0b}, sum[:]...), nil
}

// checkPCRDigest checks that the quoted selection is exactly the document's PCR list and that the
// quoted digest is sha256 over its values.
func checkPCRDigest(d *Document) error {
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](d.Quoted)
	if err != nil {
		return fmt.Errorf("%w: quoted TPMS_ATTEST", ErrMalformed)
	}
	qi, err := att.Attested.Quote()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	idx := make([]int, len(d.PCRs))
	h := sha256.New()
	for i, p := range d.PCRs {
		if len(p.Value) != 32 || (i > 0 && p.Index <= d.PCRs[i-1].Index) || p.Index < 0 || p.Index > 23 {
			return fmt.Errorf("%w: PCR list", ErrMalformed)
		}
		idx[i] = p.Index
		h.Write(p.Value)
	}
	if !bytes.Equal(tpm2.Marshal(&qi.PCRSelect), tpm2.Marshal(ptr(Selection(idx)))) {
		return fmt.Errorf("%w: quoted PCR selection differs from the listed PCRs", ErrPCRDigest)
	}
	if !bytes.Equal(qi.PCRDigest.Buffer, h.Sum(nil)) {
		return ErrPCRDigest
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
