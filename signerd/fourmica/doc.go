// Package fourmica implements the payer side of the 4Mica payment-guarantee protocol, byte-exact
// with 4mica-core: the claims types and their JSON wire format, the digests Core verifies, the
// signature rules Core applies, the V2 validation-policy hashes, and the x402 "4mica-credit"
// client scheme. It does no I/O: callers pass bytes and values in and get bytes and values out.
//
// Facts and their sources: ../shared/docs/4mica-protocol.md; guide: docs/protocol.md.
//
// # Types
//
//   - [Address] (20 bytes), [Hash] (32 bytes) and [U256] (uint256, 32 big-endian bytes) are fixed
//     size values with Core's JSON forms: addresses accepted in any case and emitted lowercase,
//     U256 accepted as "0x" hex (also "0o"/"0b"), decimal string or JSON integer and emitted as
//     minimal lowercase "0x" hex.
//   - [ClaimsV1] and [ClaimsV2] are the two guarantee claim versions; [Claims] is the tagged
//     union ("version":"v1"|"v2") that [Claims.UnmarshalJSON] / [Claims.MarshalJSON] convert to
//     and from Core's wire format. [Request] is the PaymentGuaranteeRequest body
//     {claims, signature, scheme} that Core's POST /core/guarantees takes.
//   - [Scheme] is "eip712" ([SchemeEIP712]) or "eip191" ([SchemeEIP191]).
//
// # Digests
//
// [NewDomain] validates and precomputes the EIP-712 domain separator (name, version, chainId;
// no verifyingContract). [Domain.Digest] returns the 32-byte hash Core verifies for a claim under
// a scheme; [Domain.DigestV1] and [Domain.DigestV2] are the same for one version. The encoders
// are fixed-layout (no maps, no reflection) and hash with go-ethereum's keccak state; a V1 digest
// does not allocate. EIP-191 follows Core, not the TypeScript SDK: the raw abi.encode(struct)
// bytes are signed ([EncodeEIP191Data]), with the leading offset word for V2.
//
// # Signatures
//
// [Signature] is 65 bytes r‖s‖v. [NormalizeSignature] turns any acceptable signature into the
// canonical form SDKs emit (low s, v 27/28). [VerifySignature] applies Core's rules (exactly 65
// bytes; v 0/1/27/28 or ≥35; high s tolerated) and checks that the signature recovers to the
// claim's user; [RecoverSigner] returns the recovered address. [Domain.SignedRequest] is the
// last step of signing: normalise, verify against the user, return the Core-ready [Request].
//
// # V2 validation policy
//
// [ValidationSubjectHash] and [ValidationRequestHash] compute the canonical hashes;
// [ClaimsV2.Fill] sets them; [ClaimsV2.Check] applies Core's binding checks (score 1..100,
// non-zero job hash, canonical hashes, optional chain id).
//
// # x402 "4mica-credit"
//
// [ParseRequirementsV1] reads a 402 JSON body, [ParseRequirementsV2] the base64 PAYMENT-REQUIRED
// header; [PaymentRequired.Select] picks the 4mica-credit option; [BuildClaims] builds claims
// from the chosen option plus [TabInfo], user and timestamp; [BuildEnvelope] builds the
// X-PAYMENT (v1) or PAYMENT-SIGNATURE (v2) header.
//
// # Errors
//
// Every bad input is a *[FieldError] naming the field (errors.Is(err, [ErrInvalid]) holds). A
// signature that is well formed but recovers to another address is [ErrSignatureMismatch].
// Errors never contain key material.
package fourmica
