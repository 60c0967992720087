package fourmica

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// oracleOrSkip returns the path of oracle.mjs and the node binary. Outside CI a missing
// node/oracle skips the test; with CI=true it fails (team rule: no skips in CI).
func oracleOrSkip(t *testing.T) (node, script string) {
	t.Helper()
	script = filepath.Join(sharedDir(t), "oracle", "oracle.mjs")
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CI") == "true" {
			t.Fatalf("oracle cannot run in CI: %s", msg)
		}
		t.Skipf("oracle cannot run (set CI=true to make this fatal): %s", msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node not on PATH")
	}
	if _, err := os.Stat(script); err != nil {
		missing("%v", err)
	}
	if _, err := os.Stat(filepath.Join(sharedDir(t), "oracle", "node_modules", "@4mica", "sdk")); err != nil {
		missing("npm ci not run in %s/oracle: %v", sharedDir(t), err)
	}
	return node, script
}

type oracleReq struct {
	Params struct {
		Name    string `json:"eip712_name"`
		Version string `json:"eip712_version"`
		ChainID uint64 `json:"chain_id"`
	} `json:"params"`
	Version int             `json:"version"`
	Scheme  Scheme          `json:"scheme"`
	Claims  json.RawMessage `json:"claims"`
}

type oracleResp struct {
	Error        string `json:"error"`
	Digest       string `json:"digest"`
	DigestCore   string `json:"digest_core"`
	SDKCoreAgree bool   `json:"sdk_core_agree"`
	V2           *struct {
		SubjectHash string `json:"validation_subject_hash"`
		RequestHash string `json:"validation_request_hash"`
		SDKIndep    bool   `json:"sdk_matches_independent_hashes"`
	} `json:"v2"`
}

// At least 1,000 random claims (both versions, both schemes, edge values, long and non-ASCII
// tags, chain ids up to 2^53) in one batch through the @4mica/sdk oracle: every digest_core
// equals ours, and for V2 our canonical hashes equal the SDK's.
func TestOracleDifferential(t *testing.T) {
	node, script := oracleOrSkip(t)
	const n = 1200
	g := newClaimGen(20261121)
	claims := make([]Claims, n)
	domains := make([]*Domain, n)
	schemes := make([]Scheme, n)
	reqs := make([]oracleReq, n)
	for i := range reqs {
		d := g.domain()
		for (i/2)%2 == 1 && d.ChainID() > maxSafeInt { // V2: validation_chain_id must be a safe JS integer
			d = g.domain()
		}
		domains[i] = d
		schemes[i] = []Scheme{SchemeEIP712, SchemeEIP191}[i%2]
		if (i/2)%2 == 0 {
			claims[i] = ClaimsOfV1(g.v1(maxSafeInt)) // the SDK keeps timestamps as JS numbers
		} else {
			claims[i] = ClaimsOfV2(g.v2(d.ChainID(), maxSafeInt))
		}
		r := &reqs[i]
		r.Params.Name, r.Params.Version, r.Params.ChainID = d.Name(), d.Version(), d.ChainID()
		r.Version, r.Scheme = int(claims[i].Version), schemes[i]
		var err error
		if r.Claims, err = json.Marshal(claims[i]); err != nil {
			t.Fatal(err)
		}
	}
	in, err := json.Marshal(reqs)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, script)
	cmd.Dir = filepath.Dir(script)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("oracle: %v\n%s", err, stderr.String())
	}
	t.Logf("oracle evaluated %d requests in %v", n, time.Since(start).Round(time.Millisecond))
	var out []oracleResp
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("oracle output: %v", err)
	}
	if len(out) != n {
		t.Fatalf("oracle returned %d results for %d requests", len(out), n)
	}
	counts := map[string]int{}
	for i, o := range out {
		if o.Error != "" {
			t.Fatalf("case %d: oracle error %q for %s", i, o.Error, reqs[i].Claims)
		}
		got, err := domains[i].Digest(claims[i], schemes[i])
		if err != nil {
			t.Fatal(err)
		}
		if got.Hex() != strings.ToLower(o.DigestCore) {
			t.Fatalf("case %d (%s %s): digest %s, oracle digest_core %s\nclaims %s", i, claims[i].Version, schemes[i], got.Hex(), o.DigestCore, reqs[i].Claims)
		}
		if schemes[i] == SchemeEIP712 && !o.SDKCoreAgree {
			t.Fatalf("case %d: SDK and Core disagree on an EIP-712 digest", i)
		}
		if claims[i].Version == V2 {
			if o.V2 == nil || !o.V2.SDKIndep ||
				o.V2.SubjectHash != claims[i].V2.ValidationSubjectHash.Hex() ||
				o.V2.RequestHash != claims[i].V2.ValidationRequestHash.Hex() {
				t.Fatalf("case %d: validation hashes differ from the SDK's: %+v", i, o.V2)
			}
		}
		counts[claims[i].Version.String()+"/"+string(schemes[i])]++
		if domains[i].ChainID() == 1<<53 {
			counts["chain id 2^53"]++
		}
	}
	t.Logf("digest_core equal for all: %v", counts)
}
