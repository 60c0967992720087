package server

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/ledger"
)

// refusalAuditor writes the decision records of refusals decided before any request is read
// (kill switch engaged, unknown caller) cheaply enough for a flood of them.
//
// The first refusal of a caller (uid, gid, mapped agent) for a code and route is queued to the
// ledger at once with AuditAsync (written with the next group commit; the refusal never waits
// for the fsync). Further identical refusals are only counted in memory; every second flush
// writes one record per caller with the count, the first and last time and the last pid
// (Attrs "count", "first", "last", "pid", "aggregated"="true"). So a flood costs at most one
// audit record per caller and second (plus the first one's), a mutex and a map lookup per
// refusal; the counts add up to the number of refusals. Shutdown flushes what is counted.
// When the ledger queue is full the first refusal is counted instead (never blocking it), and
// flush falls back to AppendAudit, blocking only the flusher.
type refusalAuditor struct {
	l     ledger.Engine
	clock func() time.Time
	log   *slog.Logger

	mu     sync.Mutex
	counts map[refusalKey]*refusalCount
}

// maxRefusalKeys bounds the callers tracked between flushes; past it, refusals are counted
// under one overflow key (uid/gid 2^32-1, agent "*").
const maxRefusalKeys = 4096

type refusalKey struct {
	uid, gid    uint32
	agent       string
	code, route string
}

type refusalCount struct {
	n           int // refusals not yet written
	first, last time.Time
	pid         int32
	principal   string
	reason      string
}

func newRefusalAuditor(l ledger.Engine, clock func() time.Time, log *slog.Logger) *refusalAuditor {
	return &refusalAuditor{l: l, clock: clock, log: log, counts: map[refusalKey]*refusalCount{}}
}

// refuse records one refusal of c (agent: its mapped agent, if any) with code on route.
func (a *refusalAuditor) refuse(c *policyengine.Caller, agent, route, code, reason string) {
	now := a.clock()
	k := refusalKey{uid: c.UID, gid: c.GID, agent: agent, code: code, route: route}
	a.mu.Lock()
	if _, ok := a.counts[k]; !ok && len(a.counts) >= maxRefusalKeys {
		k = refusalKey{uid: ^uint32(0), gid: ^uint32(0), agent: "*", code: code, route: route}
	}
	rc, seen := a.counts[k]
	if seen {
		if rc.n == 0 {
			rc.first = now
		}
		rc.n++
		rc.last, rc.pid = now, c.PID
		a.mu.Unlock()
		return
	}
	rc = &refusalCount{first: now, last: now, pid: c.PID, principal: principalOf(c), reason: reason}
	a.counts[k] = rc
	a.mu.Unlock()
	if err := a.l.AuditAsync(a.event(k, rc, 1, now, now, c.PID)); err != nil {
		// Queue full or closing: count it; flush writes it (re-inserted if a flush dropped it).
		a.mu.Lock()
		if cur, ok := a.counts[k]; ok {
			rc = cur
		} else {
			a.counts[k] = rc
		}
		if rc.n == 0 {
			rc.first = now
		}
		rc.n++
		a.mu.Unlock()
	}
}

func (a *refusalAuditor) event(k refusalKey, rc *refusalCount, n int, first, last time.Time, pid int32) audit.Event {
	ev := audit.Event{Kind: audit.KindDecision, Decision: "deny", Code: k.code, Reason: rc.reason,
		Principal: rc.principal, Agent: k.agent,
		Attrs: map[string]string{"route": k.route, "count": strconv.Itoa(n), "pid": strconv.FormatInt(int64(pid), 10)}}
	if n > 1 || !first.Equal(last) {
		ev.Attrs["aggregated"] = "true"
		ev.Attrs["first"] = first.UTC().Format(time.RFC3339Nano)
		ev.Attrs["last"] = last.UTC().Format(time.RFC3339Nano)
	}
	if k.agent == "*" {
		ev.Principal, ev.Agent = "*", ""
		ev.Attrs["overflow"] = "true"
	}
	return ev
}

// flush writes one record per caller with refusals counted since the last flush and forgets
// callers that had none (their next refusal is written at once again).
func (a *refusalAuditor) flush(ctx context.Context) {
	var evs []audit.Event
	a.mu.Lock()
	for k, rc := range a.counts {
		if rc.n == 0 {
			delete(a.counts, k)
			continue
		}
		evs = append(evs, a.event(k, rc, rc.n, rc.first, rc.last, rc.pid))
		rc.n = 0
	}
	a.mu.Unlock()
	for _, ev := range evs {
		err := a.l.AuditAsync(ev)
		if errors.Is(err, ledger.ErrOverloaded) {
			_, err = a.l.AppendAudit(ctx, ev)
		}
		if err != nil {
			a.log.Error("audit of refused requests failed", "code", ev.Code, "count", ev.Attrs["count"], "err", err)
		}
	}
}

// run flushes every interval until ctx ends, then once more.
func (a *refusalAuditor) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			a.flush(fctx)
			cancel()
			return
		case <-t.C:
			a.flush(ctx)
		}
	}
}

// principalOf names a caller as the pipeline does ("uid:N(user)").
func principalOf(c *policyengine.Caller) string {
	if c.User != "" {
		return "uid:" + strconv.FormatUint(uint64(c.UID), 10) + "(" + c.User + ")"
	}
	return "uid:" + strconv.FormatUint(uint64(c.UID), 10)
}
