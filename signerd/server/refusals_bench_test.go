package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"
)

// BenchmarkKillSwitchRefusal: refusals under an engaged kill switch through the agent socket
// (HTTP/1.1 keep-alive, JSON), with their aggregated audit records. Reports refusals/s, p50/p99
// and audit records per 1000 refusals.
//
//	go test -run '^$' -bench KillSwitchRefusal -benchtime 5000x ./signerd/server
func BenchmarkKillSwitchRefusal(b *testing.B) {
	d := startDaemon(b, nil)
	if err := d.EngageKillSwitch(b.Context(), "bench", "benchmark"); err != nil {
		b.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"claims": d.claims(61, 1, 1, nil)})
	for _, c := range []int{1, 4} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			before := len(d.decisions(b, "kill_switch_engaged"))
			runConcurrent(b, c, func(int) error {
				resp, err := d.agent.http.Post("http://signerd/v1/guarantees", "application/json", bytes.NewReader(body))
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 503 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			})
			time.Sleep(1200 * time.Millisecond) // one flush
			recs := len(d.decisions(b, "kill_switch_engaged")) - before
			b.ReportMetric(float64(recs)*1000/float64(b.N), "audit-records/1000-refusals")
		})
	}
}
