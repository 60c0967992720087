package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/signerd/signerd/signerd/fourmica"
)

func init() {
	register("guarantee", "4Mica guarantee tools: digest, verify (offline, no daemon)", runGuarantee)
}

// maxGuaranteeInput bounds what the guarantee commands read from stdin.
const maxGuaranteeInput = 1 << 20

func guaranteeUsage(w io.Writer) {
	fmt.Fprint(w, `usage:
  signerctl guarantee digest --chain-id N [--name 4mica] [--domain-version 1] [--scheme eip712|eip191]
      reads Core wire-format claims JSON on stdin, prints the digest Core verifies (0x…)
  signerctl guarantee verify --chain-id N [--name 4mica] [--domain-version 1]
      reads a PaymentGuaranteeRequest body {claims, signature, scheme} on stdin,
      prints "valid <address>" or exits 1 with the reason
`)
}

func runGuarantee(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		guaranteeUsage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub := args[0]
	if sub != "digest" && sub != "verify" {
		fmt.Fprintf(stderr, "signerctl guarantee: unknown subcommand %q\n", sub)
		guaranteeUsage(stderr)
		return 2
	}
	fs := flag.NewFlagSet("guarantee "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	chainID := fs.Uint64("chain-id", 0, "EIP-712 domain chainId (Core public-params chain_id); required")
	name := fs.String("name", fourmica.DefaultDomainName, "EIP-712 domain name (case-sensitive)")
	version := fs.String("domain-version", fourmica.DefaultDomainVersion, "EIP-712 domain version")
	scheme := "eip712"
	if sub == "digest" {
		fs.StringVar(&scheme, "scheme", "eip712", "signing scheme: eip712 or eip191")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "signerctl guarantee %s: unexpected arguments %q\n", sub, fs.Args())
		return 2
	}
	if *chainID == 0 {
		fmt.Fprintf(stderr, "signerctl guarantee %s: --chain-id is required\n", sub)
		return 2
	}
	domain, err := fourmica.NewDomain(*name, *version, *chainID)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl guarantee %s: %v\n", sub, err)
		return 2
	}
	input, err := io.ReadAll(io.LimitReader(stdin, maxGuaranteeInput+1))
	if err != nil {
		fmt.Fprintf(stderr, "signerctl guarantee %s: reading stdin: %v\n", sub, err)
		return 1
	}
	if len(input) > maxGuaranteeInput {
		fmt.Fprintf(stderr, "signerctl guarantee %s: input larger than %d bytes\n", sub, maxGuaranteeInput)
		return 1
	}
	if sub == "digest" {
		return guaranteeDigest(domain, scheme, input, stdout, stderr)
	}
	return guaranteeVerify(domain, input, stdout, stderr)
}

func guaranteeDigest(domain *fourmica.Domain, scheme string, input []byte, stdout, stderr io.Writer) int {
	s, err := fourmica.ParseScheme(scheme)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl guarantee digest: %v\n", err)
		return 2
	}
	claims, err := fourmica.DecodeClaims(input)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl guarantee digest: %v\n", err)
		return 1
	}
	if claims.Version == fourmica.V2 {
		if err := claims.V2.Check(domain.ChainID()); err != nil {
			fmt.Fprintf(stderr, "signerctl guarantee digest: %v\n", err)
			return 1
		}
	}
	digest, err := domain.Digest(claims, s)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl guarantee digest: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, digest.Hex())
	return 0
}

func guaranteeVerify(domain *fourmica.Domain, input []byte, stdout, stderr io.Writer) int {
	req, err := fourmica.DecodeRequest(input)
	if err != nil {
		fmt.Fprintf(stderr, "invalid: %v\n", err)
		return 1
	}
	if _, err := domain.VerifyRequest(req); err != nil {
		if errors.Is(err, fourmica.ErrSignatureMismatch) {
			digest, _ := domain.Digest(req.Claims, req.Scheme)
			if got, rerr := fourmica.RecoverSigner(digest, req.Signature[:]); rerr == nil {
				fmt.Fprintf(stderr, "invalid: signature recovers to %s, not user_address %s\n", got.Hex(), req.Claims.Payment().User.Hex())
				return 1
			}
		}
		fmt.Fprintf(stderr, "invalid: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "valid %s\n", req.Claims.Payment().User.Hex())
	return 0
}
