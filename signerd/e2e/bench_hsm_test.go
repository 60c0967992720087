package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signerd/signerd/hsm"
	_ "github.com/signerd/signerd/hsm/backends" // the PKCS#11 and TPM backends, opened in process
	"github.com/signerd/signerd/signerd/config"
)

// BenchmarkE2EVsRaw measures, in one run on the same SoftHSM2 token, signed guarantees per
// second end to end (HTTP/1.1 over the agent socket into a real signerd process: policy with a
// per-request cap, a daily budget and a rate limit, durable ledger reservation and commit, HSM
// signature, recovery) against the key backend's own SignDigest loop in this process (the
// daemon's hsm options: C_SignInit + C_Sign, low-s normalisation, v by recovery — what any
// Ethereum signer on this token must do), at concurrency 1, 2 and 4. The two sides alternate in
// rounds of 100 so that load from other processes on a shared machine hits both alike. It prints
// one BENCHROW line per concurrency (scripts/bench.sh formats them). BENCH_OPS sets the
// operations per side and concurrency (default 1500); SIGNERD_BENCH_STATE_DIR where the ledger
// lives (default: the test's directory on disk; e.g. /dev/shm to take the disk's fsync out).
func BenchmarkE2EVsRaw(b *testing.B) {
	ops := benchOps()
	e := newEnv(b, envOptions{policy: benchPolicy, stateParent: os.Getenv("SIGNERD_BENCH_STATE_DIR")})
	e.start()
	signer := openDaemonSigner(b, e)
	digests := randomDigests(256)
	ctx := context.Background()
	b.ResetTimer()
	for _, conc := range []int{1, 2, 4} {
		clients, err := warmClients(e, conc, wallet1)
		if err != nil {
			b.Fatal("warm-up: ", err)
		}
		if _, err := signer.SignDigest(ctx, digests[0]); err != nil {
			b.Fatal("warm-up: ", err)
		}
		bodies := guaranteeBodies(ops, wallet1)
		e2e := &arm{round: concurrent(conc, func(g, i int) error { return postGuarantee(clients[g], bodies[i]) })}
		raw := &arm{round: concurrent(conc, func(_, i int) error {
			_, err := signer.SignDigest(ctx, digests[i%len(digests)])
			return err
		})}
		err = alternate(ops, 100, e2e, raw)
		closeClients(clients)
		if err != nil {
			b.Fatal(err)
		}
		ratio := e2e.opsPerSec() / raw.opsPerSec()
		fmt.Printf("BENCHROW state=%s conc=%d ops=%d e2e_ops_s=%.0f raw_ops_s=%.0f e2e_p50_us=%d raw_p50_us=%d ratio=%.3f added_p50_us=%d\n",
			filepath.Dir(e.db), conc, ops, e2e.opsPerSec(), raw.opsPerSec(), e2e.p50().Microseconds(), raw.p50().Microseconds(),
			ratio, (e2e.p50() - raw.p50()).Microseconds())
		b.ReportMetric(ratio, fmt.Sprintf("ratio-c%d", conc))
	}
	b.StopTimer()
	e.stopClean()
}

// openDaemonSigner opens, in this process, the key backend the daemon of e is configured with
// (its config file's hsm: section; SoftHSM2 lets two processes hold one token) and returns the
// signer of the env's wallet. The backend is closed when the benchmark ends.
func openDaemonSigner(b *testing.B, e *env) hsm.Signer {
	b.Helper()
	cfg, err := config.Load(e.cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	be, err := hsm.Open(ctx, cfg.HSM)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	keys, err := be.List(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if strings.EqualFold(k.Address.Hex(), e.wallet) {
			s, err := be.Signer(ctx, k.URI)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}
	}
	b.Fatalf("the daemon's backend holds no key for %s (%d keys)", e.wallet, len(keys))
	return nil
}
