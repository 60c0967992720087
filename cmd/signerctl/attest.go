package main

// Offline verification of a TPM attestation document ("signerctl attest verify"): the
// document `signerctl keys attest` writes (deterministic CBOR, or its base64 as printed
// without --out) is checked with attestation.Verify, optionally against the verifier's nonce
// and a pinned attestation key, and what it proves is printed. Any failure exits 1 with the
// reason; usage errors exit 2.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/ethereum/go-ethereum/common"
	"github.com/google/go-tpm/tpm2"

	"github.com/signerd/signerd/attestation"
)

// maxAttestDoc bounds the document read (a real one is under 1 KiB).
const maxAttestDoc = 64 << 10

func attestUsage(w io.Writer) int {
	fmt.Fprintln(w, `usage: signerctl attest verify --doc FILE [--nonce HEX] [--ak-pub FILE | --ak-name HEX] [--save-ak FILE] [--json]

  --doc FILE      the document from 'signerctl keys attest' (raw CBOR from --out, or the base64
                  it prints); '-' reads stdin
  --nonce HEX     the challenge you sent (8..64 bytes, 0x optional). Without it the document's own
                  nonce is used and freshness is NOT proven (a replayed document also passes)
  --ak-pub FILE   the attestation key pinned at enrolment (PEM or DER "PUBLIC KEY", P-256)
  --ak-name HEX   or its TPM name (0x000b + sha256 of its public area), as this command prints
  --save-ak FILE  after a successful verification, write the AK as PEM (to pin it: trust on first use)
  --json          print the result as JSON

Exit status: 0 verified, 1 not verified (the reason is printed), 2 usage error.`)
	return exitUsage
}

// cmdAttest runs "signerctl attest ...".
func cmdAttest(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "verify" {
		return attestUsage(stderr)
	}
	fs := flag.NewFlagSet("signerctl attest verify", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	docPath := fs.String("doc", "", "")
	nonceHex := fs.String("nonce", "", "")
	akPubPath := fs.String("ak-pub", "", "")
	akNameHex := fs.String("ak-name", "", "")
	saveAK := fs.String("save-ak", "", "")
	asJSON := fs.Bool("json", false, "")
	if err := fs.Parse(args[1:]); err != nil {
		fmt.Fprintf(stderr, "signerctl attest verify: %v\n", err)
		return attestUsage(stderr)
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "signerctl attest verify: "+format+"\n", a...)
		return exitUsage
	}
	if fs.NArg() != 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *docPath == "" {
		return usageErr("--doc FILE is required")
	}
	if *akPubPath != "" && *akNameHex != "" {
		return usageErr("give --ak-pub or --ak-name, not both")
	}
	var nonce []byte
	if *nonceHex != "" {
		var err error
		if nonce, err = parseNonce(*nonceHex); err != nil {
			return usageErr("%v", err)
		}
	}
	var pinned *ecdsa.PublicKey
	if *akPubPath != "" {
		var err error
		if pinned, err = readAKPub(*akPubPath); err != nil {
			return usageErr("--ak-pub: %v", err)
		}
	}
	var wantName []byte
	if *akNameHex != "" {
		n, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(*akNameHex), "0x"))
		if err != nil || len(n) != 34 || n[0] != 0x00 || n[1] != 0x0b {
			return usageErr("--ak-name must be a SHA-256 TPM name: 0x000b followed by 64 hex digits")
		}
		wantName = n
	}

	fail := func(reason string) int {
		if *asJSON {
			writeJSON(stdout, map[string]any{"ok": false, "error": reason})
		} else {
			fmt.Fprintf(stdout, "attestation NOT verified: %s\n", reason)
		}
		return exitRefused
	}
	doc, err := readAttestDoc(*docPath, stdin)
	if err != nil {
		return fail(err.Error())
	}
	nonceChecked := nonce != nil
	if !nonceChecked {
		d, err := attestation.Unmarshal(doc)
		if err != nil {
			return fail(explainAttestErr(err, false))
		}
		nonce = d.Nonce
	}
	res, err := attestation.Verify(doc, nonce, pinned)
	if err != nil {
		return fail(explainAttestErr(err, pinned != nil))
	}
	// Verify accepted the document, so it decodes and its parts are well formed.
	d, err := attestation.Unmarshal(doc)
	if err != nil {
		return fail(explainAttestErr(err, false))
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](d.AKPublic)
	if err != nil {
		return fail("AK public area: " + err.Error())
	}
	name, err := tpm2.ObjectName(akPub)
	if err != nil {
		return fail("AK name: " + err.Error())
	}
	if wantName != nil && !bytes.Equal(name.Buffer, wantName) {
		return fail(fmt.Sprintf("the quote was signed by attestation key 0x%x, not the pinned --ak-name 0x%x (another TPM, or a software TPM)", name.Buffer, wantName))
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](d.Quoted)
	if err != nil {
		return fail("quoted TPMS_ATTEST: " + err.Error())
	}
	akDER, err := x509.MarshalPKIXPublicKey(res.AKPublic)
	if err != nil {
		return fail("AK public key: " + err.Error())
	}
	akPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: akDER}))
	if *saveAK != "" {
		f, err := os.OpenFile(*saveAK, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			_, err = f.WriteString(akPEM)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "signerctl attest verify: --save-ak: %v\n", err)
			return exitRefused
		}
	}

	pinnedBy := ""
	switch {
	case pinned != nil:
		pinnedBy = "--ak-pub " + *akPubPath
	case wantName != nil:
		pinnedBy = "--ak-name"
	}
	idx := make([]int, 0, len(res.PCRs))
	for i := range res.PCRs {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	wallet := common.Address(res.WalletAddress)
	if *asJSON {
		pcrs := map[string]string{}
		for _, i := range idx {
			pcrs[fmt.Sprint(i)] = fmt.Sprintf("0x%x", res.PCRs[i])
		}
		sealPCRs := res.SealPCRs
		if sealPCRs == nil {
			sealPCRs = []int{}
		}
		out := map[string]any{
			"ok":                true,
			"wallet_address":    wallet.Hex(),
			"wallet_public_key": fmt.Sprintf("0x%x", d.WalletPubKey),
			"seal_pcrs":         sealPCRs,
			"seal_policy":       hexOrEmpty(res.SealPolicy),
			"pcrs":              pcrs,
			"nonce":             fmt.Sprintf("0x%x", nonce),
			"nonce_checked":     nonceChecked,
			"ak": map[string]any{
				"name":           fmt.Sprintf("0x%x", name.Buffer),
				"public_key_pem": akPEM,
				"pinned":         pinnedBy != "",
				"pinned_by":      pinnedBy,
			},
			"tpm": map[string]any{
				"firmware_version": fmt.Sprintf("0x%016x", att.FirmwareVersion),
				"clock_ms":         att.ClockInfo.Clock,
				"reset_count":      att.ClockInfo.ResetCount,
				"restart_count":    att.ClockInfo.RestartCount,
			},
		}
		if *saveAK != "" {
			out["ak"].(map[string]any)["saved_to"] = *saveAK
		}
		return writeJSON(stdout, out)
	}

	fmt.Fprintln(stdout, "attestation OK: the quote's signature, PCR digest, nonce binding and sealing policy all verify")
	fmt.Fprintf(stdout, "wallet      %s (public key 0x%x)\n", wallet.Hex(), d.WalletPubKey)
	if len(res.SealPCRs) > 0 {
		fmt.Fprintf(stdout, "sealing     to sha256 PCRs %v, policy 0x%x: the TPM unseals this key only while those PCRs hold the quoted values\n", res.SealPCRs, res.SealPolicy)
	} else {
		fmt.Fprintln(stdout, "sealing     none: the key is not bound to PCR values (any boot state of this TPM can unseal it)")
	}
	if nonceChecked {
		fmt.Fprintf(stdout, "nonce       0x%x matches --nonce: the quote answers your challenge\n", nonce)
	} else {
		fmt.Fprintf(stdout, "nonce       0x%x NOT checked (no --nonce): freshness is not proven, the document could be a replay\n", nonce)
	}
	akLine := fmt.Sprintf("AK          ECC P-256, TPM name 0x%x", name.Buffer)
	if pinnedBy != "" {
		akLine += ", matches the pinned key (" + pinnedBy + ")"
	} else {
		akLine += ", NOT pinned: this proves consistency, not that the key is in a genuine TPM (pin it with --ak-pub or --ak-name)"
	}
	fmt.Fprintln(stdout, akLine)
	if *saveAK != "" {
		fmt.Fprintf(stdout, "            public key written to %s\n", *saveAK)
	}
	fmt.Fprintf(stdout, "TPM         firmware 0x%016x, clock %d ms, resets %d, restarts %d\n",
		att.FirmwareVersion, att.ClockInfo.Clock, att.ClockInfo.ResetCount, att.ClockInfo.RestartCount)
	fmt.Fprintln(stdout, "PCRs        (sha256, as quoted; compare them with the boot state you expect)")
	for _, i := range idx {
		mark := ""
		for _, s := range res.SealPCRs {
			if s == i {
				mark = "  (sealing)"
			}
		}
		fmt.Fprintf(stdout, "  %2d  0x%x%s\n", i, res.PCRs[i], mark)
	}
	return exitOK
}

func hexOrEmpty(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return fmt.Sprintf("0x%x", b)
}

// readAttestDoc reads the document: raw CBOR, or standard base64 of it (what `keys attest`
// prints without --out; surrounding whitespace ignored).
func readAttestDoc(path string, stdin io.Reader) ([]byte, error) {
	var r io.Reader = stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("reading the document: %v", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxAttestDoc+1))
	if err != nil {
		return nil, fmt.Errorf("reading the document: %v", err)
	}
	if len(b) > maxAttestDoc {
		return nil, fmt.Errorf("the document is larger than %d bytes: not an attestation document", maxAttestDoc)
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && isBase64Text(t) {
		dec, err := base64.StdEncoding.DecodeString(string(t))
		if err != nil {
			return nil, fmt.Errorf("the document looks like base64 but does not decode: %v", err)
		}
		return dec, nil
	}
	if len(b) == 0 {
		return nil, errors.New("the document is empty")
	}
	return b, nil
}

// isBase64Text reports whether b holds only standard base64 characters (a CBOR document
// starts with a map header byte, 0xa0..0xbf, which never is one).
func isBase64Text(b []byte) bool {
	for _, c := range b {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/', c == '=':
		default:
			return false
		}
	}
	return true
}

// readAKPub reads a pinned attestation key: a PKIX public key, PEM ("PUBLIC KEY") or DER, on P-256.
func readAKPub(path string) (*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block %q, want PUBLIC KEY", blk.Type)
		}
		der = blk.Bytes
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("not a PEM or DER public key: %v", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("not an ECC P-256 public key (the AK is P-256)")
	}
	return ek, nil
}

// explainAttestErr states a verification failure with what it means for the verifier.
func explainAttestErr(err error, pinned bool) string {
	msg := strings.TrimPrefix(err.Error(), "attestation: ")
	var hint string
	switch {
	case errors.Is(err, attestation.ErrMalformed):
		hint = "not a valid attestation document (corrupt, truncated, altered, or not one at all)"
	case errors.Is(err, attestation.ErrNonce):
		hint = "the document answers another challenge than --nonce (a replay, or the wrong nonce)"
	case errors.Is(err, attestation.ErrAK) && pinned:
		hint = "the quote was not made by the pinned attestation key (another TPM, or a software TPM), or that key is unacceptable"
	case errors.Is(err, attestation.ErrAK):
		hint = "the attestation key is not a restricted TPM signing key of the expected kind"
	case errors.Is(err, attestation.ErrSignature):
		hint = "the quoted data was altered, or signed by another key"
	case errors.Is(err, attestation.ErrQualifyingData):
		hint = "the wallet key, sealing policy or nonce in the document is not what the TPM quoted"
	case errors.Is(err, attestation.ErrPCRDigest):
		hint = "the listed PCR values are not the ones the TPM quoted"
	case errors.Is(err, attestation.ErrPolicy):
		hint = "the key's sealing policy does not match the quoted PCR values: the TPM would not unseal it in this state"
	default:
		return msg
	}
	return msg + ": " + hint
}
