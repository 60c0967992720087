package ledger

import (
	"encoding/binary"
	"math/big"
	"sync"
	"time"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/bucketstore"
)

// usageIndex mirrors the usage bucket in memory, so that the policy's usage reads and Reserve's
// budget checks cost a map lookup instead of a store scan. The store stays the source of truth:
// the index is loaded from it at Open, and the committer changes both in the same group — the
// store in the group's transaction, the index as staged deltas that are merged only once the
// transaction is applied (and dropped if it is re-run or fails).
//
// Memory is bounded like the usage bucket: one entry per counter bucket with a positive amount;
// buckets older than their window are swept with the store's (pruneUsage), a bucket that reaches
// zero is deleted, and lifetime counters (window 0) have one bucket each.
type usageIndex struct {
	mu     sync.RWMutex
	m      map[string]map[int64]*big.Int // usagePrefix → bucket → amount (applied)
	staged map[string]map[int64]*big.Int // committer-only: deltas of the group being applied
}

func newUsageIndex() *usageIndex {
	return &usageIndex{m: map[string]map[int64]*big.Int{}, staged: map[string]map[int64]*big.Int{}}
}

// load reads the usage bucket.
func (u *usageIndex) load(tx *bucketstore.Tx) error {
	c := tx.Bucket(bucketUsage).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		key, w, b, ok := splitUsageKey(k)
		if !ok || len(v) == 0 || len(v) > 64 {
			return corruptf("usage entry %x malformed", k)
		}
		p := string(usagePrefix(key, w))
		if u.m[p] == nil {
			u.m[p] = map[int64]*big.Int{}
		}
		u.m[p][b] = new(big.Int).SetBytes(v)
	}
	return c.Err()
}

// sumFrom adds the buckets of series s from bucket first on to out.
func sumFrom(out *big.Int, s map[int64]*big.Int, first int64) {
	for b, v := range s {
		if b >= first {
			out.Add(out, v)
		}
	}
}

// applied is the usage of (key, window) at now in applied groups (Ledger.Usage). Buckets after
// now's bucket count too (charged while the clock was ahead; see usage in the package comment).
func (u *usageIndex) applied(key string, window time.Duration, now time.Time) *big.Int {
	first := policyengine.WindowFirstBucket(window, now)
	out := new(big.Int)
	u.mu.RLock()
	sumFrom(out, u.m[string(usagePrefix(key, window))], first)
	u.mu.RUnlock()
	return out
}

// current is applied plus the deltas staged by the group being applied (committer only).
func (u *usageIndex) current(key string, window time.Duration, now time.Time) *big.Int {
	out := u.applied(key, window, now)
	sumFrom(out, u.staged[string(usagePrefix(key, window))], policyengine.WindowFirstBucket(window, now))
	return out
}

// bucketValue is one bucket's applied amount plus its staged delta (committer only).
func (u *usageIndex) bucketValue(prefix string, bucket int64) *big.Int {
	out := new(big.Int)
	u.mu.RLock()
	if v := u.m[prefix][bucket]; v != nil {
		out.Set(v)
	}
	u.mu.RUnlock()
	if d := u.staged[prefix][bucket]; d != nil {
		out.Add(out, d)
	}
	return out
}

// stage records delta for one bucket of the group being applied (committer only).
func (u *usageIndex) stage(prefix string, bucket int64, delta *big.Int) {
	s := u.staged[prefix]
	if s == nil {
		s = map[int64]*big.Int{}
		u.staged[prefix] = s
	}
	if d := s[bucket]; d != nil {
		d.Add(d, delta)
	} else {
		s[bucket] = new(big.Int).Set(delta)
	}
}

// discard drops the staged deltas (the group is re-run or failed).
func (u *usageIndex) discard() { clear(u.staged) }

// merge applies the staged deltas: the group's transaction was applied.
func (u *usageIndex) merge() {
	if len(u.staged) == 0 {
		return
	}
	u.mu.Lock()
	for p, s := range u.staged {
		for b, d := range s {
			cur := u.m[p][b]
			if cur == nil {
				cur = new(big.Int)
			}
			cur.Add(cur, d)
			u.set(p, b, cur)
		}
	}
	u.mu.Unlock()
	clear(u.staged)
}

// set stores v (mu held); a bucket at or below zero is deleted, like in the store.
func (u *usageIndex) set(p string, b int64, v *big.Int) {
	if v.Sign() <= 0 {
		delete(u.m[p], b)
		if len(u.m[p]) == 0 {
			delete(u.m, p)
		}
		return
	}
	if u.m[p] == nil {
		u.m[p] = map[int64]*big.Int{}
	}
	u.m[p][b] = v
}

// prune deletes the buckets pruneUsage deleted from the store at now.
func (u *usageIndex) prune(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for p, s := range u.m {
		w := prefixWindow(p)
		if w <= 0 {
			continue
		}
		first := policyengine.WindowFirstBucket(w, now)
		for b := range s {
			if b < first {
				delete(s, b)
			}
		}
		if len(s) == 0 {
			delete(u.m, p)
		}
	}
}

// prefixWindow is the window of a usagePrefix (its last 8 bytes).
func prefixWindow(p string) time.Duration {
	return time.Duration(binary.BigEndian.Uint64([]byte(p[len(p)-8:])))
}

// addUsage adds delta (may be negative) to one bucket in the store and stages it in the index; a
// bucket that reaches ≤ 0 is deleted.
func (l *Ledger) addUsage(tx *bucketstore.Tx, key string, window time.Duration, bucket int64, delta *big.Int) error {
	prefix := usagePrefix(key, window)
	k := usageKey(prefix, bucket)
	cur := l.usage.bucketValue(string(prefix), bucket)
	cur.Add(cur, delta)
	l.usage.stage(string(prefix), bucket, delta)
	if cur.Sign() <= 0 {
		return tx.Bucket(bucketUsage).Delete(k)
	}
	return tx.Bucket(bucketUsage).Put(k, cur.Bytes())
}
