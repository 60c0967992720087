package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readTestdata reads <repo root>/testdata/claims/<name>.
func readClaimsTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "claims", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func runCLI(t *testing.T, stdin []byte, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, bytes.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestGuaranteeDigest(t *testing.T) {
	v1 := readClaimsTestdata(t, "claims-v1.json")
	v2 := readClaimsTestdata(t, "claims-v2.json")
	cases := []struct {
		name  string
		in    []byte
		args  []string
		code  int
		out   string
		inErr string
	}{
		// digest_core of vectors v1-eip712-c1…, v1-eip191-c1…, v2-eip712-c1…
		{"v1 eip712", v1, []string{"--chain-id", "84532"}, 0, "0x45d5cc33e27b21046565cb7716bd779dba93663e955e76f4b46bb01ec65a57be\n", ""},
		{"v1 eip191", v1, []string{"--chain-id", "84532", "--scheme", "eip191"}, 0, "0xef3a44750c87b43890b5005b8246795b0a91ee89ad4ed8486cd3fa74253075b2\n", ""},
		{"v2 eip712", v2, []string{"--chain-id", "84532", "--name", "4mica", "--domain-version", "1"}, 0, "0x67cb6efa91589729ed0c3a7c883d5bca678a408ee40ad17d83c25fa20c5b8208\n", ""},
		{"name is case-sensitive", v1, []string{"--chain-id", "84532", "--name", "4Mica"}, 0, "", ""},
		{"v2 on another chain", v2, []string{"--chain-id", "1"}, 1, "", "validation_chain_id"},
		{"missing chain id", v1, nil, 2, "", "--chain-id is required"},
		{"unknown scheme", v1, []string{"--chain-id", "1", "--scheme", "eip-712"}, 2, "", "scheme"},
		{"bad claims", []byte(`{"version":"v3"}`), []string{"--chain-id", "1"}, 1, "", "invalid version"},
		{"not JSON", []byte(`hello`), []string{"--chain-id", "1"}, 1, "", "claims"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.in, append([]string{"guarantee", "digest"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			if tc.out != "" && out != tc.out {
				t.Fatalf("stdout %q, want %q", out, tc.out)
			}
			if tc.name == "name is case-sensitive" && (len(out) != 67 || strings.Contains(out, "45d5cc33")) {
				t.Fatalf("4Mica digest %q", out)
			}
			if tc.code != 0 && (out != "" || !strings.Contains(errOut, tc.inErr)) {
				t.Fatalf("stdout %q stderr %q, want mention of %q", out, errOut, tc.inErr)
			}
		})
	}
}

func TestGuaranteeVerify(t *testing.T) {
	const user = "0x2b5ad5c4795c026514f8317c7a215e218dccd6cf"
	for _, v := range []string{"v1", "v2"} {
		code, out, errOut := runCLI(t, readClaimsTestdata(t, "request-"+v+".json"), "guarantee", "verify", "--chain-id", "84532")
		if code != 0 || out != "valid "+user+"\n" {
			t.Fatalf("%s: exit %d stdout %q stderr %q", v, code, out, errOut)
		}
	}
	body := readClaimsTestdata(t, "request-v1.json")
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(map[string]any)) []byte {
		var c map[string]any
		_ = json.Unmarshal(body, &c)
		f(c)
		b, _ := json.Marshal(c)
		return b
	}
	cases := []struct {
		name, want string
		in         []byte
		args       []string
	}{
		{"wrong chain", "recovers to 0x", body, []string{"--chain-id", "1"}},
		{"wrong domain name", "recovers to 0x", body, []string{"--chain-id", "84532", "--name", "4Mica"}},
		{"amount changed", "not user_address " + user, mutate(func(c map[string]any) { c["claims"].(map[string]any)["amount"] = "0x2" }), []string{"--chain-id", "84532"}},
		{"scheme switched", "recovers to", mutate(func(c map[string]any) { c["scheme"] = "eip191" }), []string{"--chain-id", "84532"}},
		{"short signature", "invalid signature length 64", mutate(func(c map[string]any) { c["signature"] = c["signature"].(string)[:130] }), []string{"--chain-id", "84532"}},
		{"unknown scheme", "invalid scheme", mutate(func(c map[string]any) { c["scheme"] = "eth_sign" }), []string{"--chain-id", "84532"}},
		{"bad address", "claims.user_address", mutate(func(c map[string]any) { c["claims"].(map[string]any)["user_address"] = "0x12" }), []string{"--chain-id", "84532"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.in, append([]string{"guarantee", "verify"}, tc.args...)...)
			if code != 1 || out != "" || !strings.HasPrefix(errOut, "invalid: ") || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d stdout %q stderr %q, want exit 1 mentioning %q", code, out, errOut, tc.want)
			}
		})
	}
	if code, _, _ := runCLI(t, nil, "guarantee", "sign"); code != 2 {
		t.Fatalf("unknown subcommand exit %d", code)
	}
}
