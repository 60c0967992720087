// Command demoagent is a small agent that pays for an HTTP API through signerd: it asks the
// daemon for an x402 "4mica-credit" payment header for a sample 402 answer, then for a signed
// payment guarantee, verifies both signatures itself (EIP-712 digest recomputed, signer
// recovered and compared with the wallet), and prints the Core-ready request body and the
// x402 header.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"time"

	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/signerd/client"
	"github.com/signerd/signerd/signerd/fourmica"
)

// sample402 is what a resource server answers an unpaid request with (x402 v1 body).
const sample402 = `{
  "x402Version": 1,
  "error": "payment required",
  "accepts": [{
    "scheme": "4mica-credit",
    "network": "eip155:84532",
    "maxAmountRequired": "10000",
    "payTo": "0x1234567890123456789012345678901234567890",
    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    "resource": "https://api.example.com/v1/weather",
    "description": "one weather forecast",
    "mimeType": "application/json",
    "maxTimeoutSeconds": 300,
    "extra": {"tabEndpoint": "https://api.example.com/x402/tab"}
  }]
}`

func main() {
	socket := flag.String("socket", ".signerd-dev/agent.sock", "the daemon's agent socket")
	chainID := flag.Uint64("chain-id", 84532, "chain id of the EIP-712 domain the daemon signs for")
	name := flag.String("domain-name", fourmica.DefaultDomainName, "EIP-712 domain name")
	version := flag.String("domain-version", fourmica.DefaultDomainVersion, "EIP-712 domain version")
	flag.Parse()
	if err := run(*socket, *chainID, *name, *version, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demoagent:", err)
		os.Exit(1)
	}
}

func run(socket string, chainID uint64, name, version string, w io.Writer) error {
	dom, err := fourmica.NewDomain(name, version, chainID)
	if err != nil {
		return err
	}
	c := client.New(socket)

	var wallets struct {
		Agent   string `json:"agent"`
		Network string `json:"network"`
		Wallets []struct {
			Address string `json:"address"`
		} `json:"wallets"`
	}
	if err := c.Do("GET", "/v1/wallets", nil, &wallets); err != nil {
		return err
	}
	if len(wallets.Wallets) == 0 {
		return errors.New("the daemon offers this agent no wallet")
	}
	wallet, err := fourmica.ParseAddress(wallets.Wallets[0].Address)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "agent %q, wallet %s, network %s\n\n", wallets.Agent, wallet.Hex(), wallets.Network)

	// A fresh tab, as a resource server's tab endpoint would hand out.
	tabID, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return err
	}
	tab := "0x" + tabID.Text(16)

	// (a) x402: a payment header for the 402 answer.
	fmt.Fprintln(w, "== (a) x402: the resource server answered 402 with a 4mica-credit requirement")
	var pay struct {
		Header   string          `json:"header"`
		Value    string          `json:"value"`
		Accepted json.RawMessage `json:"accepted"`
		RecordID string          `json:"record_id"`
	}
	err = c.Do("POST", "/v1/x402/payments", map[string]any{
		"requirements": json.RawMessage(sample402),
		"tab":          map[string]any{"tab_id": tab, "next_req_id": "0x0"},
		"task":         map[string]any{"id": "demo-weather", "labels": map[string]string{"purpose": "demo"}},
	}, &pay)
	if err != nil {
		return err
	}
	env, err := fourmica.DecodeEnvelope(pay.Value)
	if err != nil {
		return fmt.Errorf("the daemon's %s header does not decode: %w", pay.Header, err)
	}
	if err := verify(dom, env.Payload, wallet); err != nil {
		return fmt.Errorf("x402 payload: %w", err)
	}
	fmt.Fprintf(w, "signature verified independently: recovers to %s (record %s)\n", wallet.Hex(), pay.RecordID)
	fmt.Fprintf(w, "send with the retried request:\n%s: %s\n\n", pay.Header, pay.Value)

	// (b) A payment guarantee for the next request on the same tab.
	fmt.Fprintln(w, "== (b) guarantee: claims for the next request on the same tab")
	claims := map[string]any{
		"version": "v1", "user_address": wallet.Hex(), "recipient_address": "0x1234567890123456789012345678901234567890",
		"tab_id": tab, "req_id": "0x1", "amount": "10000", "asset_address": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
		"timestamp": time.Now().Unix(),
	}
	var g struct {
		Signature string          `json:"signature"`
		Digest    string          `json:"digest"`
		Request   json.RawMessage `json:"request"`
		RecordID  string          `json:"record_id"`
	}
	if err := c.Do("POST", "/v1/guarantees", map[string]any{"claims": claims, "scheme": "eip712"}, &g); err != nil {
		return err
	}
	req, err := fourmica.DecodeRequest(g.Request)
	if err != nil {
		return fmt.Errorf("the daemon's request body does not decode: %w", err)
	}
	if err := verify(dom, req, wallet); err != nil {
		return fmt.Errorf("guarantee: %w", err)
	}
	if want := g.Digest; fmt.Sprint(mustDigest(dom, req)) != want {
		return fmt.Errorf("digest mismatch: daemon says %s", want)
	}
	fmt.Fprintf(w, "digest %s\nsignature verified independently: recovers to %s (record %s)\n", g.Digest, wallet.Hex(), g.RecordID)
	var pretty bytes.Buffer
	_ = json.Indent(&pretty, g.Request, "", "  ")
	fmt.Fprintf(w, "Core-ready PaymentGuaranteeRequest body (POST /core/guarantees):\n%s\n", pretty.String())
	return nil
}

func mustDigest(dom *fourmica.Domain, r *fourmica.Request) fourmica.Hash {
	h, _ := dom.Digest(r.Claims, r.Scheme)
	return h
}

// verify recomputes the digest from the claims and recovers the signer twice: with fourmica's
// Core-rule verification and directly with go-ethereum's Ecrecover.
func verify(dom *fourmica.Domain, r *fourmica.Request, wallet fourmica.Address) error {
	if r.Claims.Payment().User != wallet {
		return errors.New("claims are for another wallet")
	}
	digest, err := dom.VerifyRequest(r)
	if err != nil {
		return err
	}
	sig := r.Signature
	sig[64] -= 27
	pub, err := crypto.Ecrecover(digest[:], sig[:])
	if err != nil {
		return err
	}
	pk, err := crypto.UnmarshalPubkey(pub)
	if err != nil {
		return err
	}
	if fourmica.Address(crypto.PubkeyToAddress(*pk)) != wallet {
		return errors.New("signature recovers to another address")
	}
	return nil
}
