package fourmica

import (
	"bytes"
	"math/big"
	"strconv"
	"testing"

	"github.com/ethereum/go-ethereum/common/math"
	"github.com/ethereum/go-ethereum/signer/core/apitypes"
)

// apitypesData builds go-ethereum's generic typed data for claims c under domain d.
func apitypesData(d *Domain, c Claims) apitypes.TypedData {
	p := c.Payment()
	types := apitypes.Types{
		"EIP712Domain": {{Name: "name", Type: "string"}, {Name: "version", Type: "string"}, {Name: "chainId", Type: "uint256"}},
	}
	base := []apitypes.Type{
		{Name: "user", Type: "address"}, {Name: "recipient", Type: "address"}, {Name: "tabId", Type: "uint256"},
		{Name: "reqId", Type: "uint256"}, {Name: "amount", Type: "uint256"}, {Name: "asset", Type: "address"},
		{Name: "timestamp", Type: "uint64"},
	}
	msg := apitypes.TypedDataMessage{
		"user": p.User.Hex(), "recipient": p.Recipient.Hex(), "tabId": p.TabID.Dec(), "reqId": p.ReqID.Hex(),
		"amount": p.Amount.Big(), "asset": p.Asset.Hex(), "timestamp": strconv.FormatUint(p.Timestamp, 10),
	}
	primary := "SolGuaranteeRequestClaimsV1"
	if c.Version == V2 {
		primary = "SolGuaranteeRequestClaimsV2"
		v := c.V2
		base = append(base,
			apitypes.Type{Name: "validationRegistryAddress", Type: "address"},
			apitypes.Type{Name: "validationRequestHash", Type: "bytes32"},
			apitypes.Type{Name: "validationChainId", Type: "uint256"},
			apitypes.Type{Name: "validatorAddress", Type: "address"},
			apitypes.Type{Name: "validatorAgentId", Type: "uint256"},
			apitypes.Type{Name: "minValidationScore", Type: "uint8"},
			apitypes.Type{Name: "validationSubjectHash", Type: "bytes32"},
			apitypes.Type{Name: "jobHash", Type: "bytes32"},
			apitypes.Type{Name: "requiredValidationTag", Type: "string"},
		)
		msg["validationRegistryAddress"] = v.ValidationRegistry.Hex()
		msg["validationRequestHash"] = v.ValidationRequestHash.Hex()
		msg["validationChainId"] = new(big.Int).SetUint64(v.ValidationChainID)
		msg["validatorAddress"] = v.Validator.Hex()
		msg["validatorAgentId"] = v.ValidatorAgentID.Hex()
		msg["minValidationScore"] = strconv.Itoa(int(v.MinValidationScore))
		msg["validationSubjectHash"] = v.ValidationSubjectHash.Hex()
		msg["jobHash"] = v.JobHash.Hex()
		msg["requiredValidationTag"] = v.RequiredValidationTag
	}
	types[primary] = base
	return apitypes.TypedData{
		Types:       types,
		PrimaryType: primary,
		Domain: apitypes.TypedDataDomain{
			Name: d.Name(), Version: d.Version(),
			ChainId: (*math.HexOrDecimal256)(new(big.Int).SetUint64(d.ChainID())),
		},
		Message: msg,
	}
}

// The fixed-layout encoder is byte-equal to go-ethereum's apitypes on random inputs: the
// encodeData bytes, the struct hash, the domain separator and the final digest.
func TestFixedLayoutMatchesApitypes(t *testing.T) {
	g := newClaimGen(1)
	n := 500
	if testing.Short() {
		n = 100
	}
	for i := 0; i < n; i++ {
		d := g.domain()
		var c Claims
		var ours []byte
		if i%2 == 0 {
			c = ClaimsOfV1(g.v1(^uint64(0)))
			ours = make([]byte, 256)
			encodeDataV1(ours, c.V1)
		} else {
			c = ClaimsOfV2(g.v2(d.ChainID(), ^uint64(0)))
			tag := hashString(c.V2.RequiredValidationTag)
			ours = make([]byte, 544)
			encodeDataV2(ours, c.V2, &tag)
		}
		td := apitypesData(d, c)
		enc, err := td.EncodeData(td.PrimaryType, td.Message, 1)
		if err != nil {
			t.Fatalf("apitypes EncodeData: %v", err)
		}
		if !bytes.Equal(enc, ours) {
			t.Fatalf("case %d (%s): encodeData differs\n got %x\nwant %x", i, c.Version, ours, []byte(enc))
		}
		sep, err := td.HashStruct("EIP712Domain", td.Domain.Map())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sep, d.Separator().Bytes()) {
			t.Fatalf("case %d: domain separator differs", i)
		}
		want, _, err := apitypes.TypedDataAndHash(td)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.Digest(c, SchemeEIP712)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:], want) {
			t.Fatalf("case %d (%s): digest %s, apitypes %x", i, c.Version, got.Hex(), want)
		}
	}
}

func hashString(s string) Hash {
	h := getHasher()
	defer putHasher(h)
	return h.sumString(s)
}
