package config

import (
	"strings"
	"testing"
	"time"
)

func TestCoreSection(t *testing.T) {
	c, err := Parse([]byte(sample+"core: {url: \"https://base.api.4mica.xyz/\", siwe_domain: api.4mica.xyz, contract: \"0x1111111111111111111111111111111111111111\", max_fee_per_gas_wei: \"50000000000\"}\n"), "/x")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Core.Enabled() || c.Core.ReceiptTimeout != 2*time.Minute || c.Core.ContractAddress().Hex() != "0x1111111111111111111111111111111111111111" ||
		c.Core.MaxFeePerGas().String() != "50000000000" {
		t.Fatalf("core section: %+v", c.Core)
	}
	none, err := Parse([]byte(sample), "/x")
	if err != nil || none.Core.Enabled() || none.Core.ReceiptTimeout != 0 {
		t.Fatalf("no core section: %+v %v", none.Core, err)
	}
	if d, err := Dev(t.TempDir()); err != nil || d.Core.Enabled() {
		t.Fatalf("signerd dev must have no Core by default: %+v %v", d.Core, err)
	}
}

func TestCoreSectionRejects(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"no siwe domain":     {`core: {url: "https://core.example", contract: "0x1111111111111111111111111111111111111111"}`, "core.siwe_domain is required"},
		"siwe domain URL":    {`core: {url: "https://core.example", contract: "0x1111111111111111111111111111111111111111", siwe_domain: "https://core.example/"}`, "core.siwe_domain"},
		"url not http":       {`core: {url: "ftp://core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111"}`, "core.url"},
		"url relative":       {`core: {url: "core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111"}`, "core.url"},
		"url credentials":    {`core: {url: "https://u:p@core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111"}`, "core.url"},
		"rpc url":            {`core: {url: "https://core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111", rpc_url: "localhost:8545"}`, "core.rpc_url"},
		"contract":           {`core: {url: "https://core.example", siwe_domain: core.example, contract: "0x12"}`, "core.contract"},
		"contract zero":      {`core: {url: "https://core.example", siwe_domain: core.example, contract: "0x0000000000000000000000000000000000000000"}`, "core.contract"},
		"fee cap":            {`core: {url: "https://core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111", max_fee_per_gas_wei: "1.5"}`, "core.max_fee_per_gas_wei"},
		"fee cap zero":       {`core: {url: "https://core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111", max_fee_per_gas_wei: "0"}`, "core.max_fee_per_gas_wei"},
		"negative timeout":   {`core: {url: "https://core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111", receipt_timeout: -1s}`, "core.receipt_timeout"},
		"no contract":        {`core: {url: "https://core.example", siwe_domain: core.example}`, "core.contract is required with core.url"},
		"fields without url": {`core: {siwe_domain: core.example}`, "core: url is required"},
		"unknown field":      {`core: {url: "https://core.example", siwe_domain: core.example, contract: "0x1111111111111111111111111111111111111111", bogus: 1}`, "bogus"},
	} {
		_, err := Parse([]byte(sample+tc.yaml+"\n"), "/x")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one naming %q", name, err, tc.want)
		}
	}
}
