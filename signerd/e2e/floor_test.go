package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/ethereum/go-ethereum/crypto"
	"golang.org/x/sys/unix"
)

// floor holds what the mandated work costs on this machine, measured in the same run as
// the end-to-end benchmark, and the best ratio any implementation could reach with it.
//
// Mandated on every signature's path, whatever the code around it: two durable writes (the
// reservation before signing, the signature's commit before the answer), each at least one
// fdatasync of the ledger's filesystem, and two recoveries (the key backend verifies its signature
// by recovery; the pipeline verifies it again against the claims' user_address, as Core does).
type floor struct {
	FsyncP50   time.Duration // one 512-byte write + fdatasync in a preallocated file beside the ledger
	FsyncCPU   time.Duration // CPU (user+sys) of this process per write+fdatasync
	RecoverP50 time.Duration // one go-ethereum Ecrecover (libsecp256k1)
}

// measureFloor measures the floor in dir (the ledger's directory).
func measureFloor(dir string) (floor, error) {
	var f floor
	file, err := os.CreateTemp(dir, "fsync-floor-")
	if err != nil {
		return f, err
	}
	defer os.Remove(file.Name())
	defer file.Close()
	const n = 400
	// Preallocate and sync, so that each measured fdatasync flushes data only (the cheapest case
	// for any log-structured store).
	if _, err := file.Write(make([]byte, n*512)); err != nil {
		return f, err
	}
	if err := file.Sync(); err != nil {
		return f, err
	}
	rec := make([]byte, 512)
	rand.Read(rec)
	lat := make([]time.Duration, n)
	cpu0 := processCPU()
	for i := range lat {
		t0 := time.Now()
		if _, err := file.WriteAt(rec, int64(i*512)); err != nil {
			return f, err
		}
		if err := unix.Fdatasync(int(file.Fd())); err != nil {
			return f, err
		}
		lat[i] = time.Since(t0)
	}
	f.FsyncCPU = (processCPU() - cpu0) / n
	f.FsyncP50 = p50(lat)

	key, err := crypto.GenerateKey()
	if err != nil {
		return f, err
	}
	digest := crypto.Keccak256([]byte("floor"))
	sig, err := crypto.Sign(digest, key)
	if err != nil {
		return f, err
	}
	rl := make([]time.Duration, 2000)
	for i := range rl {
		t0 := time.Now()
		if _, err := crypto.Ecrecover(digest, sig); err != nil {
			return f, err
		}
		rl[i] = time.Since(t0)
	}
	f.RecoverP50 = p50(rl)
	return f, nil
}

// added is the least latency the mandated work adds to a raw signature at concurrency 1.
func (f floor) added() time.Duration { return 2*f.FsyncP50 + 2*f.RecoverP50 }

// latencyCeiling is the best end-to-end/raw throughput ratio at concurrency 1, where one caller
// waits for each answer: raw / (raw + mandated latency).
func (f floor) latencyCeiling(rawP50 time.Duration) float64 {
	return float64(rawP50) / float64(rawP50+f.added())
}

// cpuCeiling is the best ratio once the cores are saturated (the token signs on the same cores):
// raw CPU per signature / (raw CPU + the mandated CPU: two recoveries, two fdatasyncs).
func (f floor) cpuCeiling(rawCPU time.Duration) float64 {
	return float64(rawCPU) / float64(rawCPU+2*f.RecoverP50+2*f.FsyncCPU)
}

func (f floor) String() string {
	return fmt.Sprintf("fsync_p50_us=%d fsync_cpu_us=%d recover_us=%d added_floor_us=%d",
		f.FsyncP50.Microseconds(), f.FsyncCPU.Microseconds(), f.RecoverP50.Microseconds(), f.added().Microseconds())
}

// processCPU is this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
