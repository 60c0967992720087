package pipeline_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/signerd/pipeline"
)

// TestRetiredAtSignIsDenial: a key retired between the keyring lookup and the signature
// (admin `keys retire` racing a request, or a PKCS#11 token answering CKR_KEY_FUNCTION_NOT_PERMITTED)
// makes SignDigest fail with hsm.ErrKeyRetired. The same fact found one step earlier is a
// 403 unknown_wallet denial; here it becomes a 503 backend_unavailable fault, which tells the
// agent to retry a request that can never succeed.
func TestRetiredAtSignIsDenial(t *testing.T) {
	f := newFixture(t, intentMode)
	f.signer.fail = fmt.Errorf("%w: the token refuses to sign with %s", hsm.ErrKeyRetired, f.signer.Address().Hex())
	_, err := f.p.Sign(context.Background(), f.adm, f.request(1, 10))
	e := pipeline.AsError(err)
	if e.Kind != pipeline.Denied || e.Code != pipeline.CodeUnknownWallet || e.Status != 403 {
		t.Fatalf("retired key at signing: kind %s code %s status %d, want denied unknown_wallet 403", e.Kind, e.Code, e.Status)
	}
}
