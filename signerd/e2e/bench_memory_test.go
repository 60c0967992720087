package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// rssLimitMB is the bound on the daemon's resident set (VmRSS, MB) after the run.
	rssLimitMB = 200
	// rssClients is how many keep-alive agent clients drive the memory benchmark.
	rssClients = 16
	// rssFullRun is the run the figure is about; only it prints rss_mb_1m and hwm_mb_1m.
	rssFullRun = 1_000_000
)

// rssRequests is BENCH_RSS_N, the signed guarantees the memory benchmark drives (default
// 1,000,000).
func rssRequests() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_RSS_N")); err == nil && n > 0 {
		return n
	}
	return rssFullRun
}

// BenchmarkDaemonRSS measures the resident memory of a real signerd process (TPM-sealed key on
// swtpm, unsealed once, benchPolicy: per-request cap, daily budget, rate limit) while
// rssClients keep-alive clients make it sign BENCH_RSS_N guarantees, each on a fresh tab so
// that replay keys and payment records keep growing. After the warm-up and after every tenth
// of the run it prints `RSSROW n=… rss_mb=… hwm_mb=… ops_s=… heap_mb=… gc_goal_mb=… go_sys_mb=…`
// (VmRSS and VmHWM from /proc/PID/status, the rate over that tenth, then the daemon's Go heap
// figures from /metrics, to tell where growth comes from: see metricMB), then
// `ledger_mb=` (bytes of the ledger directory's files) and the final VmRSS and VmHWM:
// `rss_mb_1m=`/`hwm_mb_1m=` for the full run, `rss_mb_n=`/`hwm_mb_n=` with `rss_n=` for a
// shorter one. It fails if the final VmRSS exceeds rssLimitMB. Bodies are made per request,
// so the benchmark's own memory does not grow with BENCH_RSS_N.
func BenchmarkDaemonRSS(b *testing.B) {
	n := rssRequests()
	e := newTPMEnv(b)
	e.start()
	clients, err := warmClients(e, rssClients, e.wallet)
	if err != nil {
		b.Fatal("warm-up: ", err)
	}
	defer closeClients(clients)
	pid := e.proc.Process.Pid
	b.ResetTimer()
	e.printRSSRow(pid, 0, 0)
	step := max(1, n/10)
	var last procMem
	for done := 0; done < n; {
		count := min(step, n-done)
		t0 := time.Now()
		if err := signDistinct(clients, count, e.wallet); err != nil {
			b.Fatalf("after %d guarantees: %v", done, err)
		}
		done += count
		last = e.printRSSRow(pid, done, float64(count)/time.Since(t0).Seconds())
	}
	b.StopTimer()
	printRSSTotals(n, last, dirBytes(e.db))
	if last.rssMB > rssLimitMB {
		b.Errorf("daemon VmRSS after %d signed guarantees: %.1f MB, limit %d MB", n, last.rssMB, rssLimitMB)
	}
	e.stopClean()
}

// printRSSRow samples the daemon's memory after done guarantees, prints it as an RSSROW line
// with the rate opsPerSec of the stretch that led there, and returns the sample. A daemon whose
// /proc entry cannot be read (it died) stops the benchmark.
func (e *env) printRSSRow(pid, done int, opsPerSec float64) procMem {
	e.t.Helper()
	m, err := readProcMem(pid)
	if err != nil {
		e.t.Fatalf("daemon memory after %d guarantees: %v\n%s", done, err, e.log())
	}
	fmt.Printf("RSSROW n=%d rss_mb=%.1f hwm_mb=%.1f ops_s=%.0f heap_mb=%s gc_goal_mb=%s go_sys_mb=%s\n",
		done, m.rssMB, m.hwmMB, opsPerSec, e.metricMB("go_memstats_heap_inuse_bytes"),
		e.metricMB("go_memstats_next_gc_bytes"), e.metricMB("go_memstats_sys_bytes"))
	return m
}

// metricMB is the daemon's /metrics sample name (bytes) in MB, one decimal, or NA when it cannot
// be read. Heap in use, the GC's next goal (about twice the heap live at the last GC) and the
// Go runtime's memory from the OS tell the Go heap from memory allocated outside it (pebble's
// block cache and memtables, C libraries).
func (e *env) metricMB(name string) string {
	v, ok := e.counter(name)
	if !ok {
		return "NA"
	}
	return strconv.FormatFloat(v/(1<<20), 'f', 1, 64)
}

// printRSSTotals prints the ledger directory's size and the final VmRSS and VmHWM of a run of n
// guarantees, named for the million only when the run was that long.
func printRSSTotals(n int, last procMem, ledgerBytes int64) {
	fmt.Printf("ledger_mb=%.1f\n", float64(ledgerBytes)/(1<<20))
	if n == rssFullRun {
		fmt.Printf("rss_mb_1m=%.1f\nhwm_mb_1m=%.1f\n", last.rssMB, last.hwmMB)
		return
	}
	fmt.Printf("rss_n=%d\nrss_mb_n=%.1f\nhwm_mb_n=%.1f\n", n, last.rssMB, last.hwmMB)
}

// signDistinct has the clients sign count guarantees between them, each client taking the next
// one until none is left, every body made just before it is sent (a fresh random tab, the
// current timestamp). It returns the first failure; the other clients finish their share.
func signDistinct(clients []*client, count int, wallet string) error {
	var next atomic.Int64
	return parallelErr(len(clients), func(g int) error {
		for next.Add(1) <= int64(count) {
			if err := postGuarantee(clients[g], guaranteeBodies(1, wallet)[0]); err != nil {
				return err
			}
		}
		return nil
	})
}

// procMem is a process's resident set and its peak, in MB.
type procMem struct {
	rssMB, hwmMB float64
}

// readProcMem reads VmRSS and VmHWM of process pid from /proc/PID/status.
func readProcMem(pid int) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	return parseProcMem(f)
}

// parseProcMem reads the VmRSS and VmHWM lines (`VmRSS:	  12345 kB`) of a /proc/PID/status
// text; it fails when either is missing.
func parseProcMem(r io.Reader) (procMem, error) {
	var m procMem
	var seen int
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return m, fmt.Errorf("%s: unexpected %q", name, rest)
		}
		kb, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return m, fmt.Errorf("%s: %v", name, err)
		}
		if name == "VmRSS" {
			m.rssMB = kb / 1024
		} else {
			m.hwmMB = kb / 1024
		}
		seen++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if seen != 2 {
		return m, fmt.Errorf("VmRSS or VmHWM missing (%d of 2 found)", seen)
	}
	return m, nil
}

// dirBytes is the total size of the regular files under path (path itself if it is a file);
// unreadable entries count as 0.
func dirBytes(path string) int64 {
	var total int64
	filepath.Walk(path, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			total += info.Size()
		}
		return nil
	})
	return total
}

// TestParseProcMemReadsResidentAndPeak: VmRSS and VmHWM come out in MB from a /proc/PID/status
// text, and a text without them (a kernel thread, say) is an error, not a zero.
func TestParseProcMemReadsResidentAndPeak(t *testing.T) {
	status := "Name:\tsignerd\nVmPeak:\t 2000000 kB\nVmHWM:\t  153600 kB\nVmRSS:\t  102400 kB\nThreads:\t12\n"
	m, err := parseProcMem(strings.NewReader(status))
	if err != nil || m.rssMB != 100 || m.hwmMB != 150 {
		t.Fatalf("got %+v %v, want rss 100 MB, hwm 150 MB", m, err)
	}
	if _, err := parseProcMem(strings.NewReader("Name:\tkthreadd\nThreads:\t1\n")); err == nil {
		t.Fatal("no VmRSS/VmHWM: want an error")
	}
}
