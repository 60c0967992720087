package coreclient

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/signerd/fourmica"
)

// U256 is a uint256 with Core's JSON forms (§5 "Numbers"): accepted as "0x" hex (also
// "0o"/"0b"), a decimal string or a JSON integer in u64 range, exactly (no floats); emitted as
// minimal lowercase "0x" hex. It is fourmica.U256, the parser the rest of signerd uses.
type U256 = fourmica.U256

// ByteList is a byte string that Core serialises as a JSON array of numbers (Rust Vec<u8>),
// e.g. CorePublicParameters.public_key (§5.2).
type ByteList []byte

// UnmarshalJSON accepts a JSON array of integers 0..255 (or null).
func (b *ByteList) UnmarshalJSON(data []byte) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		*b = nil
		return nil
	}
	var nums []json.Number
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&nums); err != nil {
		return fmt.Errorf("want a JSON array of byte numbers: %w", err)
	}
	out := make([]byte, len(nums))
	for i, n := range nums {
		v, err := strconv.ParseUint(n.String(), 10, 8)
		if err != nil {
			return fmt.Errorf("element %d (%s) is not a byte", i, n)
		}
		out[i] = byte(v)
	}
	*b = out
	return nil
}

// MarshalJSON emits a JSON array of numbers.
func (b ByteList) MarshalJSON() ([]byte, error) {
	nums := make([]int, len(b))
	for i, v := range b {
		nums[i] = int(v)
	}
	return json.Marshal(nums)
}

// PublicParams is Core's CorePublicParameters (GET /core/public-params, §5.2; CORE
// crates/rpc/src/core.rs).
type PublicParams struct {
	PublicKey                             ByteList         `json:"public_key"` // BLS G1 key
	ContractAddress                       common.Address   `json:"contract_address"`
	EthereumHTTPRPCURL                    string           `json:"ethereum_http_rpc_url,omitempty"`
	EIP712Name                            string           `json:"eip712_name"`
	EIP712Version                         string           `json:"eip712_version"`
	ChainID                               uint64           `json:"chain_id"`
	MaxAcceptedGuaranteeVersion           uint64           `json:"max_accepted_guarantee_version"`
	AcceptedGuaranteeVersions             []uint64         `json:"accepted_guarantee_versions"`
	ActiveGuaranteeDomainSeparator        string           `json:"active_guarantee_domain_separator"`
	TrustedValidationRegistries           []common.Address `json:"trusted_validation_registries"`
	ValidationHashCanonicalizationVersion string           `json:"validation_hash_canonicalization_version"`
}

// AcceptedVersions returns accepted_guarantee_versions, or, when Core omitted it (older Core),
// 1..max_accepted_guarantee_version as Core's own accepted_guarantee_versions_or_default does.
func (p *PublicParams) AcceptedVersions() []uint64 {
	if len(p.AcceptedGuaranteeVersions) > 0 {
		return p.AcceptedGuaranteeVersions
	}
	var out []uint64
	for v := uint64(1); v <= p.MaxAcceptedGuaranteeVersion; v++ {
		out = append(out, v)
	}
	return out
}

// Accepts reports whether Core accepts guarantees of version v.
func (p *PublicParams) Accepts(v uint64) bool {
	for _, a := range p.AcceptedVersions() {
		if a == v {
			return true
		}
	}
	return false
}

// Token is one supported ERC-20 collateral token (GET /core/tokens, §5.2).
type Token struct {
	Symbol   string         `json:"symbol"`
	Address  common.Address `json:"address"`
	Decimals uint8          `json:"decimals"`
}

// Tokens is the answer of GET /core/tokens.
type Tokens struct {
	ChainID uint64  `json:"chain_id"`
	Tokens  []Token `json:"tokens"`
}

// AssetBalance is Core's AssetBalanceInfo for one (user, asset) (§5.2): Core's view of the
// deposited total and the amount locked by issued guarantees.
type AssetBalance struct {
	UserAddress  common.Address `json:"user_address"`
	AssetAddress common.Address `json:"asset_address"`
	Total        U256           `json:"total"`
	Locked       U256           `json:"locked"`
	Version      int32          `json:"version"`
	UpdatedAt    int64          `json:"updated_at"`
}

// TabInfo is Core's TabInfo (§5.2).
type TabInfo struct {
	TabID                    U256           `json:"tab_id"`
	UserAddress              common.Address `json:"user_address"`
	RecipientAddress         common.Address `json:"recipient_address"`
	AssetAddress             common.Address `json:"asset_address"`
	AcceptedGuaranteeVersion uint64         `json:"accepted_guarantee_version"`
	StartTimestamp           int64          `json:"start_timestamp"`
	TTLSeconds               int64          `json:"ttl_seconds"`
	Status                   string         `json:"status"`            // PENDING | OPEN | CLOSED
	SettlementStatus         string         `json:"settlement_status"` // PENDING | SETTLED | FAILED | REMUNERATED
	CreatedAt                int64          `json:"created_at"`
	UpdatedAt                int64          `json:"updated_at"`
}

// GuaranteeInfo is Core's GuaranteeInfo (§5.2).
type GuaranteeInfo struct {
	TabID          U256           `json:"tab_id"`
	ReqID          U256           `json:"req_id"`
	Version        uint64         `json:"version"`
	FromAddress    common.Address `json:"from_address"`
	ToAddress      common.Address `json:"to_address"`
	AssetAddress   common.Address `json:"asset_address"`
	Amount         U256           `json:"amount"`
	StartTimestamp int64          `json:"start_timestamp"`
	Certificate    *string        `json:"certificate"` // JSON text of the BLS cert, or null
}

// CollateralEvent is Core's CollateralEventInfo (§5.2).
type CollateralEvent struct {
	ID           string         `json:"id"`
	UserAddress  common.Address `json:"user_address"`
	AssetAddress common.Address `json:"asset_address"`
	Amount       U256           `json:"amount"`
	EventType    string         `json:"event_type"` // DEPOSIT|WITHDRAW|RESERVE|CANCEL_RESERVE|UNLOCK|REMUNERATE
	TabID        *U256          `json:"tab_id"`
	ReqID        *U256          `json:"req_id"`
	TxID         *string        `json:"tx_id"`
	CreatedAt    int64          `json:"created_at"`
}
