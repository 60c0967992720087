package coreclient

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/ethereum/go-ethereum/common"
)

// PublicParams fetches Core's CorePublicParameters (GET /core/public-params, public, §5.2).
// The fields Core always sends (public_key, contract_address, eip712_name, eip712_version,
// chain_id) must be present; absent defaulted fields get Core's defaults
// (max_accepted_guarantee_version 1, CORE crates/rpc/src/core.rs).
func (c *Client) PublicParams(ctx context.Context) (*PublicParams, error) {
	const op = "GET /core/public-params"
	var raw map[string]json.RawMessage
	if err := c.do(ctx, request{method: http.MethodGet, path: "/core/public-params"}, &raw); err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, &ResponseError{Op: op, Reason: "null"}
	}
	for _, k := range []string{"public_key", "contract_address", "eip712_name", "eip712_version", "chain_id"} {
		if v, ok := raw[k]; !ok || string(v) == "null" {
			return nil, &ResponseError{Op: op, Reason: "missing " + k}
		}
	}
	p := &PublicParams{MaxAcceptedGuaranteeVersion: 1}
	b, _ := json.Marshal(raw)
	if err := json.Unmarshal(b, p); err != nil {
		return nil, &ResponseError{Op: op, Reason: sanitize(err.Error())}
	}
	if p.ChainID == 0 {
		return nil, &ResponseError{Op: op, Reason: "chain_id is 0"}
	}
	return p, nil
}

// CheckDomain compares Core's public params with the domain signerd signs for and returns a
// *DomainMismatchError (ErrDomainMismatch) naming the first differing field, or nil. The
// EIP-712 domain is (name, version, chainId) with no verifyingContract (§1.1): name and
// version are compared byte for byte (the name is case-sensitive in the hash); chain_id must
// equal chainID. contract, when non-zero, must equal contract_address (the Core4Mica contract
// that transactions go to, §5.5). signerd must refuse to sign when this fails.
func CheckDomain(p *PublicParams, chainID uint64, name, version string, contract common.Address) error {
	if p == nil {
		return invalidArg("no public params")
	}
	if p.ChainID != chainID {
		return &DomainMismatchError{Field: "chain_id", Core: strconv.FormatUint(p.ChainID, 10), Want: strconv.FormatUint(chainID, 10)}
	}
	if p.EIP712Name != name {
		return &DomainMismatchError{Field: "eip712_name", Core: sanitize(p.EIP712Name), Want: name}
	}
	if p.EIP712Version != version {
		return &DomainMismatchError{Field: "eip712_version", Core: sanitize(p.EIP712Version), Want: version}
	}
	if contract != (common.Address{}) && p.ContractAddress != contract {
		return &DomainMismatchError{Field: "contract_address", Core: p.ContractAddress.Hex(), Want: contract.Hex()}
	}
	return nil
}

// Discover fetches the public params, checks them against Options.Domain with CheckDomain
// and, when they match, remembers them (the contract address for transactions and views).
// The daemon calls it at start and refuses to sign for this Core on ErrDomainMismatch.
func (c *Client) Discover(ctx context.Context) (*PublicParams, error) {
	p, err := c.PublicParams(ctx)
	if err != nil {
		return nil, err
	}
	d := c.opts.Domain
	if err := CheckDomain(p, d.ChainID, d.EIP712Name, d.EIP712Version, d.Contract); err != nil {
		return nil, err
	}
	c.stateMu.Lock()
	c.params = p
	c.stateMu.Unlock()
	return p, nil
}

// Contract returns the Core4Mica address: Options.Domain.Contract when set, else the one from
// Core's public params (discovered on first use).
func (c *Client) Contract(ctx context.Context) (common.Address, error) {
	if c.opts.Domain.Contract != (common.Address{}) {
		return c.opts.Domain.Contract, nil
	}
	c.stateMu.Lock()
	p := c.params
	c.stateMu.Unlock()
	if p == nil {
		var err error
		if p, err = c.Discover(ctx); err != nil {
			return common.Address{}, err
		}
	}
	return p.ContractAddress, nil
}

// PinnedContract returns Options.Domain.Contract, the Core4Mica address every value- or
// allowance-moving call goes to (Discover checks that Core's public params name the same);
// without a pinned contract it refuses with ErrNoContract and asks Core nothing.
func (c *Client) PinnedContract(context.Context) (common.Address, error) {
	if c.opts.Domain.Contract == (common.Address{}) {
		return common.Address{}, ErrNoContract
	}
	return c.opts.Domain.Contract, nil
}

// Tokens fetches the supported ERC-20 collateral tokens (GET /core/tokens, public, §5.2).
func (c *Client) Tokens(ctx context.Context) (*Tokens, error) {
	var t *Tokens
	if err := c.do(ctx, request{method: http.MethodGet, path: "/core/tokens"}, &t); err != nil {
		return nil, err
	}
	if t == nil {
		return nil, &ResponseError{Op: "GET /core/tokens", Reason: "null"}
	}
	return t, nil
}

// Asset fetches Core's balance record for (user, asset) (GET /core/users/{user}/assets/{asset},
// needs tab:read, §5.2). It returns (nil, nil) when Core answers null: Core has no record, so it
// would refuse any guarantee with "user not registered" (§6). ETH is asset address(0) (§5.5).
func (c *Client) Asset(ctx context.Context, user, asset common.Address) (*AssetBalance, error) {
	var a *AssetBalance
	path := "/core/users/" + lower(user) + "/assets/" + lower(asset)
	if err := c.do(ctx, request{method: http.MethodGet, path: path, auth: true}, &a); err != nil {
		return nil, err
	}
	return a, nil
}

// Tab fetches a tab (GET /core/tabs/{tab_id}, §5.2); (nil, nil) when Core answers null. The
// tab id goes into the path as 0x hex, as the SDKs send it.
func (c *Client) Tab(ctx context.Context, tabID U256) (*TabInfo, error) {
	var t *TabInfo
	if err := c.do(ctx, request{method: http.MethodGet, path: "/core/tabs/" + tabID.Hex(), auth: true}, &t); err != nil {
		return nil, err
	}
	return t, nil
}

// Guarantees lists a tab's guarantees, oldest first (GET /core/tabs/{tab_id}/guarantees,
// §5.2); Core answers 404 (*HTTPError) when the tab does not exist.
func (c *Client) Guarantees(ctx context.Context, tabID U256) ([]GuaranteeInfo, error) {
	var g []GuaranteeInfo
	if err := c.do(ctx, request{method: http.MethodGet, path: "/core/tabs/" + tabID.Hex() + "/guarantees", auth: true}, &g); err != nil {
		return nil, err
	}
	return g, nil
}

// CollateralEvents lists a tab's collateral events (GET /core/tabs/{tab_id}/collateral-events,
// §5.2).
func (c *Client) CollateralEvents(ctx context.Context, tabID U256) ([]CollateralEvent, error) {
	var e []CollateralEvent
	if err := c.do(ctx, request{method: http.MethodGet, path: "/core/tabs/" + tabID.Hex() + "/collateral-events", auth: true}, &e); err != nil {
		return nil, err
	}
	return e, nil
}

// lower is the lowercase 0x form Core stores addresses in (§5).
func lower(a common.Address) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 2, 42)
	b[0], b[1] = '0', 'x'
	for _, v := range a {
		b = append(b, digits[v>>4], digits[v&15])
	}
	return string(b)
}
