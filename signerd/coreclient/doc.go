// Package coreclient is signerd's thin embedded client for 4Mica Core and its Core4Mica
// contract, for one wallet: it discovers Core's public parameters and refuses a signing
// domain other than the configured one, logs in with SIWE through the wallet's Signer (an
// hsm.Signer), reads balances, tabs and guarantees, computes free collateral by the protocol's
// rule, and builds, signs and sends the collateral and settlement transactions (deposit,
// withdrawal request/cancel/finalize, pay tab in ERC-20 or ETH).
//
// Facts and section numbers (§) refer to ../shared/docs/4mica-protocol.md; guide:
// docs/core-client.md.
//
// # Errors
//
// Every error matches one class with errors.Is: ErrRefused (*HTTPError: Core's status and
// message), ErrUnreachable (*NetworkError: transport faults), ErrBadResponse (*ResponseError:
// a 2xx answer that breaks the protocol), ErrDomainMismatch (*DomainMismatchError),
// ErrSigner / ErrSignature (nothing sent), ErrDenied (Options.Authorize or MaxFeePerGas refused
// a transaction), ErrChain (*ChainError), ErrChainMismatch, ErrTxReverted (*RevertedError),
// ErrNoSigner / ErrNoChain, ErrInvalidOptions / ErrInvalidArgument. Tokens never appear in
// errors or logs.
package coreclient
