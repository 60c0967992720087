package coreclient_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
)

// Example shows how the daemon embeds the client: discover Core and refuse another domain,
// check free collateral, then deposit under the policy hook.
func Example() {
	ctx := context.Background()
	var signer hsm.Signer      // backend.Signer(ctx, uri)
	var chain coreclient.Chain // ethclient.Dial(params.EthereumHTTPRPCURL or configured RPC)
	c, err := coreclient.New(coreclient.Options{
		BaseURL:    "https://base.api.4mica.xyz/",
		SIWEDomain: "base.api.4mica.xyz",
		Domain:     coreclient.Domain{ChainID: 84532, EIP712Name: "4mica", EIP712Version: "1"},
		Signer:     signer,
		Chain:      chain,
		Authorize: func(ctx context.Context, call coreclient.Call) error {
			if call.Kind == coreclient.KindPayTabETH && call.Amount.Cmp(fourmica.MustU256("1000000000000000000")) > 0 {
				return errors.New("ETH tab payments above 1 ETH need an operator")
			}
			return nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := c.Discover(ctx); errors.Is(err, coreclient.ErrDomainMismatch) {
		fmt.Println("refusing to sign for this Core:", err)
		return
	}
	usdc := common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
	col, err := c.FreeCollateral(ctx, c.Wallet(), usdc)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("free:", col.Free.Dec(), "pending known:", col.PendingKnown)
	calls, err := c.DepositCalls(ctx, usdc, fourmica.MustU256("5000000"))
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, call := range calls { // approve, then depositStablecoin
		if _, _, err := c.SendAndWait(ctx, call); err != nil {
			fmt.Println(call.Kind, err)
			return
		}
	}
}
