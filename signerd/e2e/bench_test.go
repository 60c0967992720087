package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

const benchPolicy = allowUSDCPolicy + `budgets:
  - id: daily
    per: [agent]
    window: day
    limit: "1000000000000000"
`

// BenchmarkE2EVsRaw measures, in one run on the same SoftHSM2 token, signed guarantees per
// second end to end (HTTP/1.1 over the agent socket into a real signerd process: policy, durable
// ledger reservation and commit, HSM signature, recovery) against a bare C_SignInit + C_Sign
// loop in this process, at concurrency 1, 2 and 4. The two sides alternate in short rounds so
// that load from other processes on a shared machine hits both alike. It prints one BENCHROW
// line per concurrency (scripts/bench.sh formats them). BENCH_OPS sets the operations per side
// and concurrency (default 1500); SIGNERD_BENCH_STATE_DIR where the ledger lives.
func BenchmarkE2EVsRaw(b *testing.B) {
	ops := 1500
	if s := os.Getenv("BENCH_OPS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			ops = n
		}
	}
	// SIGNERD_BENCH_STATE_DIR puts the ledger elsewhere (e.g. /dev/shm, to separate the daemon's
	// own cost from the disk's fsync cost); the default is the test's directory on disk.
	e := newEnv(b, envOptions{policy: benchPolicy, stateParent: os.Getenv("SIGNERD_BENCH_STATE_DIR")})
	e.start()
	// The same token, opened in this process for the raw loop.
	tok, err := openRawToken(filepath.Join(e.dir, "dev", "hsm"))
	if err != nil {
		b.Fatal(err)
	}
	defer tok.close()
	var digests [256][32]byte
	for i := range digests {
		rand.Read(digests[i][:])
	}
	// What the mandated work costs here (fdatasync beside the ledger, recovery), for the ceilings.
	fl, err := measureFloor(filepath.Dir(e.db))
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("FLOORROW %s\n", fl)
	b.ResetTimer()
	for _, conc := range []int{1, 2, 4} {
		raws := make([]*rawSession, conc)
		clients := make([]*client, conc)
		for g := range raws {
			if raws[g], err = tok.session(); err != nil {
				b.Fatal(err)
			}
			clients[g] = e.agentClient()
		}
		bodies := make([][]byte, ops)
		for i := range bodies {
			bodies[i], _ = json.Marshal(map[string]any{"claims": newClaims("1"), "scheme": "eip712"})
		}
		// Warm up both paths (connections, sessions).
		for g := 0; g < conc; g++ {
			if st, raw, err := clients[g].call("POST", "/v1/guarantees", mustJSON(map[string]any{"claims": newClaims("1")})); err != nil || st != 200 {
				b.Fatalf("warm-up: %d %v %s", st, err, raw)
			}
			raws[g].Sign(digests[0][:])
		}
		const round = 100
		var e2eLat, rawLat []time.Duration
		var e2eTime, rawTime, rawCPU time.Duration
		var mu sync.Mutex
		run := func(n int, op func(g, i int) error, lat *[]time.Duration) time.Duration {
			var next atomic.Int64
			var wg sync.WaitGroup
			local := make([]time.Duration, n)
			start := time.Now()
			for g := 0; g < conc; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1) - 1)
						if i >= n {
							return
						}
						t0 := time.Now()
						if err := op(g, i); err != nil {
							b.Error(err)
							return
						}
						local[i] = time.Since(t0)
					}
				}()
			}
			wg.Wait()
			d := time.Since(start)
			mu.Lock()
			*lat = append(*lat, local...)
			mu.Unlock()
			return d
		}
		for done := 0; done < ops; done += round {
			n := min(round, ops-done)
			base := done
			e2eTime += run(n, func(g, i int) error {
				st, raw, err := clients[g].call("POST", "/v1/guarantees", bodies[base+i])
				if err != nil || st != 200 {
					return fmt.Errorf("guarantee: %d %v %s", st, err, raw)
				}
				return nil
			}, &e2eLat)
			cpu0 := processCPU()
			rawTime += run(n, func(g, i int) error {
				_, err := raws[g].Sign(digests[(base+i)%len(digests)][:])
				return err
			}, &rawLat)
			rawCPU += processCPU() - cpu0
			if b.Failed() {
				return
			}
		}
		for g := range raws {
			raws[g].Close()
			clients[g].close()
		}
		e2eOps, rawOps := float64(ops)/e2eTime.Seconds(), float64(ops)/rawTime.Seconds()
		e2eP50, rawP50 := p50(e2eLat), p50(rawLat)
		rawCPUOp := rawCPU / time.Duration(ops)
		fmt.Printf("BENCHROW state=%s conc=%d ops=%d e2e_ops_s=%.0f raw_ops_s=%.0f e2e_p50_us=%d raw_p50_us=%d ratio=%.3f added_p50_us=%d raw_cpu_us=%d lat_ceiling=%.3f cpu_ceiling=%.3f\n",
			filepath.Dir(e.db), conc, ops, e2eOps, rawOps, e2eP50.Microseconds(), rawP50.Microseconds(), e2eOps/rawOps, (e2eP50 - rawP50).Microseconds(),
			rawCPUOp.Microseconds(), fl.latencyCeiling(rawP50), fl.cpuCeiling(rawCPUOp))
		b.ReportMetric(e2eOps/rawOps, fmt.Sprintf("ratio-c%d", conc))
	}
	b.StopTimer()
	e.stopClean()
}

func p50(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// rawToken is a bare PKCS#11 view of the daemon's token (the module loaded in this process).
type rawToken struct {
	p    *pkcs11.Ctx
	slot uint
	key  []*pkcs11.Attribute
}

type rawSession struct {
	t   *rawToken
	s   pkcs11.SessionHandle
	obj pkcs11.ObjectHandle
}

func openRawToken(hsmDir string) (*rawToken, error) {
	os.Setenv("SOFTHSM2_CONF", filepath.Join(hsmDir, "softhsm2.conf"))
	p := pkcs11.New(softhsmModule)
	if p == nil {
		return nil, fmt.Errorf("cannot load %s", softhsmModule)
	}
	if err := p.Initialize(); err != nil {
		return nil, err
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return nil, err
	}
	pin, err := os.ReadFile(filepath.Join(hsmDir, "pin"))
	if err != nil {
		return nil, err
	}
	for _, sl := range slots {
		ti, err := p.GetTokenInfo(sl)
		if err != nil || strings.TrimRight(ti.Label, " ") != "signerd-dev" {
			continue
		}
		t := &rawToken{p: p, slot: sl}
		s, err := p.OpenSession(sl, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			return nil, err
		}
		if err := p.Login(s, pkcs11.CKU_USER, strings.TrimSpace(string(pin))); err != nil && err != pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
			return nil, err
		}
		return t, nil
	}
	return nil, fmt.Errorf("token signerd-dev not found")
}

func (t *rawToken) session() (*rawSession, error) {
	s, err := t.p.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, err
	}
	if err := t.p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}); err != nil {
		return nil, err
	}
	objs, _, err := t.p.FindObjects(s, 1)
	t.p.FindObjectsFinal(s)
	if err != nil || len(objs) == 0 {
		return nil, fmt.Errorf("no private key on the token: %v", err)
	}
	return &rawSession{t: t, s: s, obj: objs[0]}, nil
}

// Sign is one bare C_SignInit + C_Sign (CKM_ECDSA, raw r‖s).
func (r *rawSession) Sign(digest []byte) ([]byte, error) {
	if err := r.t.p.SignInit(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, r.obj); err != nil {
		return nil, err
	}
	return r.t.p.Sign(r.s, digest)
}

func (r *rawSession) Close() { r.t.p.CloseSession(r.s) }

func (t *rawToken) close() {
	t.p.CloseAllSessions(t.slot)
	t.p.Finalize()
	t.p.Destroy()
}
