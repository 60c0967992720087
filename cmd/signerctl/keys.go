package main

// Key set-up commands ("signerctl keys ..."). They open a key backend directly (offline:
// --backend FILE, a YAML hsm.Options, or --module/--token/--pin-file flags for PKCS#11), or,
// with --socket, ask a running daemon's admin API (list, generate, import, retire).

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"gopkg.in/yaml.v3"

	"github.com/signerd/signerd/hsm"
	_ "github.com/signerd/signerd/hsm/backends" // every backend this build includes
	"github.com/signerd/signerd/hsm/pkcs11"
	"github.com/signerd/signerd/signerd/client"
)

func init() {
	register("keys", "set up wallet keys: init-softhsm, generate, import, list, retire, sign, attest", runKeys)
}

func keysUsage(w io.Writer) {
	fmt.Fprint(w, `usage: signerctl keys <command> [flags]

  init-softhsm --dir D --label L [--pin-file F]   create a development SoftHSM2 token
  generate --label L                              generate a key on the device
  import --label L --key-file F                   import a raw 32-byte hex key (file mode 0400/0600)
  import --label L --keystore F --passphrase-file P   import an Ethereum keystore v3 file
  list [--json]                                   list keys: address, URI, facts (TPM: state=sealed|unsealed|...)
  retire URI                                      retire a key (listed, never signs again)
  sign --uri URI --digest 0x<32 bytes>            sign a digest, print the 65-byte signature
  attest --uri URI --nonce HEX [--out FILE]       TPM keys: a quote binding the wallet key to this TPM
                                                  and the verifier's 8..64-byte nonce (CBOR document,
                                                  printed as base64 or written to FILE; docs/tpm.md)

Backend (offline): --backend FILE (YAML hsm.Options), or --module M --token L (--pin-file F | --pin-env V)
Daemon: --socket PATH makes list, generate, import, retire and attest use a running signerd's admin API;
without --socket, --backend, --module or --token, $SIGNERD_ADMIN_SOCKET is used the same way.
`)
}

// keyFlags are the flags shared by the key commands.
type keyFlags struct {
	fs                          *flag.FlagSet
	backend, module, token      *string
	pinFile, pinEnv, socket     *string
	label, uri, digest, keyFile *string
	keystore, passphraseFile    *string
	dir, nonce, out             *string
	json                        *bool
}

func newKeyFlags(name string, stderr io.Writer) *keyFlags {
	fs := flag.NewFlagSet("signerctl keys "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return &keyFlags{fs: fs,
		backend:        fs.String("backend", "", "backend YAML file (hsm.Options)"),
		module:         fs.String("module", "", "PKCS#11 module path (instead of --backend)"),
		token:          fs.String("token", "", "PKCS#11 token label (instead of --backend)"),
		pinFile:        fs.String("pin-file", "", "file holding the user PIN (mode 0400/0600)"),
		pinEnv:         fs.String("pin-env", "", "environment variable holding the user PIN"),
		socket:         fs.String("socket", "", "a running daemon's admin socket: use its API instead of the device"),
		label:          fs.String("label", "", "key or token label"),
		uri:            fs.String("uri", "", "key URI"),
		digest:         fs.String("digest", "", "32-byte digest, 0x-hex"),
		keyFile:        fs.String("key-file", "", "file with a raw hex private key"),
		keystore:       fs.String("keystore", "", "Ethereum keystore v3 file"),
		passphraseFile: fs.String("passphrase-file", "", "file holding the keystore passphrase"),
		dir:            fs.String("dir", "", "directory for the SoftHSM2 configuration and tokens"),
		nonce:          fs.String("nonce", "", "attest: the verifier's challenge, 8..64 bytes in hex"),
		out:            fs.String("out", "", "attest: write the CBOR document to this file instead of printing base64"),
		json:           fs.Bool("json", false, "print JSON"),
	}
}

// parse parses flags that may be interleaved with positional arguments.
func (k *keyFlags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := k.fs.Parse(args); err != nil {
			return nil, err
		}
		args = k.fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runKeys(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		keysUsage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub := args[0]
	k := newKeyFlags(sub, stderr)
	pos, err := k.parse(args[1:])
	if err != nil {
		return exitUsage
	}
	usageErr := func(msg string) int {
		fmt.Fprintf(stderr, "signerctl keys %s: %s\n", sub, msg)
		return exitUsage
	}
	switch sub {
	case "init-softhsm":
		if *k.dir == "" || *k.label == "" {
			return usageErr("--dir and --label are required")
		}
		return keysInitSoftHSM(k, stdout, stderr)
	case "generate", "import", "list", "retire", "sign", "attest":
	default:
		fmt.Fprintf(stderr, "signerctl keys: unknown command %q\n", sub)
		keysUsage(stderr)
		return exitUsage
	}
	if sub == "retire" && *k.uri == "" && len(pos) == 1 {
		*k.uri = pos[0]
		pos = nil
	}
	if len(pos) > 0 {
		return usageErr(fmt.Sprintf("unexpected arguments %q", pos))
	}
	var imp *importRequest
	switch sub {
	case "generate":
		if *k.label == "" {
			return usageErr("--label is required")
		}
	case "retire":
		if *k.uri == "" {
			return usageErr("the key URI is required")
		}
	case "sign":
		if *k.uri == "" || *k.digest == "" {
			return usageErr("--uri and --digest are required")
		}
	case "attest":
		if *k.uri == "" || *k.nonce == "" {
			return usageErr("--uri and --nonce are required")
		}
		if _, err := parseNonce(*k.nonce); err != nil {
			return usageErr(err.Error())
		}
	case "import":
		if *k.label == "" {
			return usageErr("--label is required")
		}
		imp, err = readImport(k)
		if err != nil {
			fmt.Fprintf(stderr, "signerctl keys import: %v\n", err)
			return exitUsage
		}
		defer imp.zero()
	}
	if *k.socket == "" && *k.backend == "" && *k.module == "" && *k.token == "" {
		// No device named: like every admin command, use the daemon named by
		// $SIGNERD_ADMIN_SOCKET (what `signerd dev` tells operators to export).
		*k.socket = os.Getenv("SIGNERD_ADMIN_SOCKET")
	}
	if *k.socket != "" {
		if sub == "sign" {
			return usageErr("sign works offline only (agents sign through the daemon's agent API)")
		}
		return keysViaDaemon(sub, k, imp, stdout, stderr)
	}
	opts, err := backendOptions(k)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl keys %s: %v\n", sub, err)
		return exitUsage
	}
	ctx := context.Background()
	be, err := hsm.Open(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl keys %s: opening the %s backend: %v\n", sub, opts.Type, err)
		return exitRefused
	}
	defer be.Close()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "signerctl keys %s: %v\n", sub, err)
		return exitRefused
	}
	switch sub {
	case "list":
		keys, err := be.List(ctx)
		if err != nil {
			return fail(err)
		}
		return printKeys(keys, *k.json, stdout)
	case "generate":
		ki, err := be.Generate(ctx, hsm.GenerateOptions{Label: *k.label})
		if err != nil {
			return fail(err)
		}
		return printKey(ki, *k.json, stdout)
	case "import":
		o := hsm.ImportOptions{Label: *k.label, Passphrase: imp.Passphrase}
		if imp.key != nil {
			o.Key = imp.key // zeroed by the backend
		} else {
			o.Keystore = []byte(imp.Keystore)
		}
		ki, err := be.Import(ctx, o)
		if err != nil {
			return fail(err)
		}
		return printKey(ki, *k.json, stdout)
	case "retire":
		if err := be.Retire(ctx, *k.uri); err != nil {
			return fail(err)
		}
		keys, err := be.List(ctx)
		if err != nil {
			return fail(err)
		}
		for _, ki := range keys {
			if ki.URI == *k.uri || sameKey(ki.URI, *k.uri) {
				return printKey(ki, *k.json, stdout)
			}
		}
		fmt.Fprintf(stdout, "retired %s\n", *k.uri)
		return exitOK
	case "attest":
		at, ok := be.(attester)
		if !ok {
			return fail(fmt.Errorf("the %s backend cannot attest keys (TPM keys only)", be.Name()))
		}
		nonce, _ := parseNonce(*k.nonce)
		doc, err := at.Attest(ctx, *k.uri, nonce)
		if err != nil {
			return fail(err)
		}
		return printAttestation(k, doc, stdout, stderr)
	case "sign":
		d, err := parseDigest(*k.digest)
		if err != nil {
			return usageErr(err.Error())
		}
		s, err := be.Signer(ctx, *k.uri)
		if err != nil {
			return fail(err)
		}
		sig, err := s.SignDigest(ctx, d)
		if err != nil {
			return fail(err)
		}
		if *k.json {
			return writeJSON(stdout, map[string]string{"address": s.Address().Hex(), "digest": "0x" + hex.EncodeToString(d[:]), "signature": "0x" + hex.EncodeToString(sig[:])})
		}
		fmt.Fprintf(stdout, "0x%x\n", sig)
		return exitOK
	}
	return exitUsage
}

// attester is a backend that can attest its keys (hsm/tpm's Backend.Attest).
type attester interface {
	Attest(ctx context.Context, uri string, nonce []byte) ([]byte, error)
}

// parseNonce decodes an attestation nonce: hex (0x optional), 8..64 bytes.
func parseNonce(s string) ([]byte, error) {
	n, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), "0x"))
	if err != nil || len(n) < 8 || len(n) > 64 {
		return nil, errors.New("--nonce must be 8 to 64 bytes in hex (16 to 128 hex digits, 0x optional)")
	}
	return n, nil
}

// printAttestation writes the CBOR document to --out (mode 0644: it holds no secret) or prints
// it as standard base64 (or JSON with --json).
func printAttestation(k *keyFlags, doc []byte, stdout, stderr io.Writer) int {
	if *k.out != "" {
		if err := os.WriteFile(*k.out, doc, 0o644); err != nil {
			fmt.Fprintf(stderr, "signerctl keys attest: %v\n", err)
			return exitRefused
		}
		fmt.Fprintf(stdout, "wrote the attestation document of %s (%d bytes of CBOR) to %s\n", *k.uri, len(doc), *k.out)
		return exitOK
	}
	if *k.json {
		return writeJSON(stdout, map[string]string{"uri": *k.uri, "nonce": *k.nonce, "document": base64.StdEncoding.EncodeToString(doc)})
	}
	fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(doc))
	return exitOK
}

// sameKey compares two key URIs by their parsed identity (token and id).
func sameKey(a, b string) bool {
	ua, err1 := pkcs11.ParseURI(a)
	ub, err2 := pkcs11.ParseURI(b)
	return err1 == nil && err2 == nil && bytes.Equal(ua.ID, ub.ID) && (ua.Token == "" || ub.Token == "" || ua.Token == ub.Token)
}

func parseDigest(s string) ([32]byte, error) {
	var d [32]byte
	raw, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), "0x"))
	if err != nil || len(raw) != 32 {
		return d, errors.New("--digest must be 0x followed by 64 hex digits")
	}
	copy(d[:], raw)
	return d, nil
}

// backendOptions builds hsm.Options from --backend FILE or the PKCS#11 flags.
func backendOptions(k *keyFlags) (hsm.Options, error) {
	var o hsm.Options
	if *k.backend != "" {
		if *k.module != "" || *k.token != "" {
			return o, errors.New("give --backend or --module/--token, not both")
		}
		raw, err := os.ReadFile(*k.backend)
		if err != nil {
			return o, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&o); err != nil {
			return o, fmt.Errorf("%s: %v", *k.backend, err)
		}
		if o.Type == "" {
			return o, fmt.Errorf("%s: type missing (pkcs11 or tpm)", *k.backend)
		}
		if o.Type == "pkcs11" && (*k.pinFile != "" || *k.pinEnv != "") {
			o.PKCS11.PINFile, o.PKCS11.PINEnv = *k.pinFile, *k.pinEnv
		}
		return o, nil
	}
	if *k.token == "" {
		return o, errors.New("say which backend: --backend FILE, or --token L [--module M] (--pin-file F | --pin-env V), or --socket PATH (a running daemon; also $SIGNERD_ADMIN_SOCKET)")
	}
	o.Type = "pkcs11"
	o.PKCS11 = hsm.PKCS11Options{Module: *k.module, TokenLabel: *k.token, PINFile: *k.pinFile, PINEnv: *k.pinEnv, Sessions: 1}
	if o.PKCS11.Module == "" {
		o.PKCS11.Module = pkcs11.SoftHSMModule()
	}
	return o, nil
}

// importRequest is the body of POST /v1/admin/keys/import; key holds the raw key for
// offline use (never serialised except as KeyHex for the daemon).
type importRequest struct {
	Label      string `json:"label"`
	KeyHex     string `json:"key_hex,omitempty"`
	Keystore   string `json:"keystore,omitempty"`
	Passphrase string `json:"passphrase,omitempty"`
	key        []byte
}

func (r *importRequest) zero() {
	if r != nil {
		hsm.Zero(r.key)
	}
}

// readSecretFile reads a file that must not be readable by group or others.
func readSecretFile(path, what string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s %s has mode %04o: make it 0400 or 0600", what, path, fi.Mode().Perm())
	}
	return os.ReadFile(path)
}

func readImport(k *keyFlags) (*importRequest, error) {
	r := &importRequest{Label: *k.label}
	switch {
	case *k.keyFile != "" && *k.keystore == "":
		raw, err := readSecretFile(*k.keyFile, "key file")
		if err != nil {
			return nil, err
		}
		defer hsm.Zero(raw)
		txt := bytes.TrimPrefix(bytes.TrimSpace(raw), []byte("0x"))
		key := make([]byte, hex.DecodedLen(len(txt)))
		if _, err := hex.Decode(key, txt); err != nil || len(key) != 32 {
			hsm.Zero(key)
			return nil, errors.New("key file must hold 64 hex digits (optionally 0x-prefixed)")
		}
		r.key = key
	case *k.keystore != "" && *k.keyFile == "":
		if *k.passphraseFile == "" {
			return nil, errors.New("--keystore needs --passphrase-file")
		}
		doc, err := os.ReadFile(*k.keystore)
		if err != nil {
			return nil, err
		}
		pass, err := readSecretFile(*k.passphraseFile, "passphrase file")
		if err != nil {
			return nil, err
		}
		r.Keystore = string(doc)
		r.Passphrase = strings.TrimRight(string(pass), "\r\n")
		hsm.Zero(pass)
	default:
		return nil, errors.New("give exactly one of --key-file or --keystore")
	}
	return r, nil
}

// keysViaDaemon runs list/generate/import/retire against a running daemon's admin API.
func keysViaDaemon(sub string, k *keyFlags, imp *importRequest, stdout, stderr io.Writer) int {
	c := client.New(adminSocket(*k.socket))
	var one struct {
		Key hsm.KeyInfo `json:"key"`
	}
	var err error
	switch sub {
	case "list":
		var all struct {
			Keys []hsm.KeyInfo `json:"keys"`
		}
		if err = c.Do("GET", "/v1/admin/keys", nil, &all); err == nil {
			return printKeys(all.Keys, *k.json, stdout)
		}
	case "generate":
		err = c.Do("POST", "/v1/admin/keys/generate", map[string]string{"label": *k.label}, &one)
	case "import":
		if imp.key != nil {
			imp.KeyHex = hex.EncodeToString(imp.key)
		}
		err = c.Do("POST", "/v1/admin/keys/import", imp, &one)
		imp.KeyHex, imp.Passphrase = "", ""
	case "retire":
		err = c.Do("POST", "/v1/admin/keys/retire", map[string]string{"uri": *k.uri}, &one)
	case "attest":
		var ans struct {
			Document []byte `json:"document"` // base64 in JSON
		}
		nonce, _ := parseNonce(*k.nonce) // checked by runKeys
		if err = c.Do("POST", "/v1/admin/keys/attest", map[string]string{"uri": *k.uri, "nonce": hex.EncodeToString(nonce)}, &ans); err == nil {
			return printAttestation(k, ans.Document, stdout, stderr)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "signerctl keys %s: %v\n", sub, err)
		var ae *client.Error
		if errors.As(err, &ae) {
			return exitRefused
		}
		return exitUnreachable
	}
	return printKey(one.Key, *k.json, stdout)
}

func writeJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitRefused
	}
	return exitOK
}

// facts summarises a key's security facts in one short string.
func facts(ki hsm.KeyInfo) string {
	f := []string{string(ki.Origin)}
	if ki.NonExtractable {
		f = append(f, "non-extractable")
	} else {
		f = append(f, "EXTRACTABLE")
	}
	if st, ok := ki.Facts["state"].(string); ok && st != "" {
		f = append(f, "state="+st) // TPM keys: sealed, unsealed, policy_mismatch, ...
	}
	if len(ki.SealedPCRs) > 0 {
		pcrs := make([]string, len(ki.SealedPCRs))
		for i, p := range ki.SealedPCRs {
			pcrs[i] = fmt.Sprint(p)
		}
		// No spaces: the list table's columns stay whitespace-separated (awk '{print $4}').
		f = append(f, "sealed-pcrs=["+strings.Join(pcrs, ",")+"]")
	}
	if ki.Retired {
		f = append(f, "RETIRED")
	}
	return strings.Join(f, ",")
}

func printKeys(keys []hsm.KeyInfo, asJSON bool, w io.Writer) int {
	if keys == nil {
		keys = []hsm.KeyInfo{}
	}
	// Sorted by label (then URI) whatever order the backend or the daemon lists them in.
	keys = slices.Clone(keys)
	slices.SortStableFunc(keys, func(a, b hsm.KeyInfo) int {
		return cmp.Or(cmp.Compare(a.Label, b.Label), cmp.Compare(a.URI, b.URI))
	})
	if asJSON {
		return writeJSON(w, map[string]any{"keys": keys})
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tLABEL\tFACTS\tURI")
	for _, ki := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ki.Address.Hex(), ki.Label, facts(ki), ki.URI)
	}
	tw.Flush()
	return exitOK
}

func printKey(ki hsm.KeyInfo, asJSON bool, w io.Writer) int {
	if asJSON {
		return writeJSON(w, map[string]any{"key": ki})
	}
	fmt.Fprintf(w, "address: %s\nlabel:   %s\nfacts:   %s\nuri:     %s\n", ki.Address.Hex(), ki.Label, facts(ki), ki.URI)
	return exitOK
}

// keysInitSoftHSM creates a development SoftHSM2 configuration and token, a 0600 PIN file and
// a backend YAML, and says what to export.
func keysInitSoftHSM(k *keyFlags, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "signerctl keys init-softhsm: %v\n", err)
		return exitRefused
	}
	d, err := pkcs11.WriteSoftHSMDir(*k.dir)
	if err != nil {
		return fail(err)
	}
	if p, err := d.TokenPath(*k.label); err == nil {
		return fail(fmt.Errorf("a token labelled %q already exists in %s", *k.label, p))
	}
	pinFile := *k.pinFile
	if pinFile == "" {
		pinFile = filepath.Join(d.Dir, *k.label+".pin")
	}
	pinFile, _ = filepath.Abs(pinFile)
	var pin []byte
	if _, err := os.Stat(pinFile); err == nil {
		pin, err = pkcs11.ReadPIN(hsm.PKCS11Options{PINFile: pinFile})
		if err != nil {
			return fail(err)
		}
	} else {
		pin = pkcs11.RandomPIN()
		if err := pkcs11.WritePINFile(pinFile, pin); err != nil {
			return fail(err)
		}
	}
	defer hsm.Zero(pin)
	so := pkcs11.RandomPIN()
	defer hsm.Zero(so)
	soFile := filepath.Join(d.Dir, *k.label+".so-pin")
	if err := pkcs11.WritePINFile(soFile, so); err != nil {
		return fail(err)
	}
	if err := d.InitToken(*k.label, pin, so); err != nil {
		return fail(err)
	}
	module := *k.module
	if module == "" {
		module = pkcs11.SoftHSMModule()
	}
	cfg := map[string]any{"type": "pkcs11", "pkcs11": map[string]any{
		"module":      module,
		"module_env":  map[string]string{"SOFTHSM2_CONF": d.Conf},
		"token_label": *k.label,
		"pin_file":    pinFile,
		"sessions":    2,
	}}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return fail(err)
	}
	yamlPath := filepath.Join(d.Dir, *k.label+".yaml")
	if err := os.WriteFile(yamlPath, out, 0o600); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, `SoftHSM2 token %q initialised (development only: SoftHSM keeps keys in files)
  configuration: %s
  token dir:     %s
  user PIN file: %s (0600)
  SO PIN file:   %s (0600)
  backend file:  %s

For softhsm2-util and pkcs11-tool in this shell:
  export SOFTHSM2_CONF=%s
Next:
  signerctl keys generate --backend %s --label my-wallet
`, *k.label, d.Conf, d.TokenDir, pinFile, soFile, yamlPath, d.Conf, yamlPath)
	return exitOK
}
