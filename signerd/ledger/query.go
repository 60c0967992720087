package ledger

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"sort"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
)

var _ policyengine.UsageReader = (*Ledger)(nil)

// Usage implements policyengine.UsageReader: committed usage of (key, window) in the sliding
// window ending at now. It reads committed state only; Reserve re-checks inside its transaction.
func (l *Ledger) Usage(key string, window time.Duration, now time.Time) (*big.Int, error) {
	var out *big.Int
	err := l.view("usage", func(*bucketstore.Tx) error {
		out = l.usage.applied(key, window, now)
		return nil
	})
	return out, err
}

// Spend is the usage of one counter at a time.
type Spend struct {
	Key     string        `json:"key"`
	Window  time.Duration `json:"window"`
	Used    *big.Int      `json:"used"`
	Buckets int           `json:"buckets"` // non-empty buckets inside the window
}

// MarshalJSON renders a Spend for the admin API: window in nanoseconds (and seconds), used as a
// decimal string (amounts can exceed what a JSON number holds exactly).
func (s Spend) MarshalJSON() ([]byte, error) {
	used := "0"
	if s.Used != nil {
		used = s.Used.String()
	}
	return json.Marshal(struct {
		Key     string `json:"key"`
		Window  int64  `json:"window"`
		WindowS int64  `json:"window_s"`
		Used    string `json:"used"`
		Buckets int    `json:"buckets"`
	}{s.Key, int64(s.Window), int64(s.Window / time.Second), used, s.Buckets})
}

// Spend returns the usage of (key, window) at now (the same number as Usage).
func (l *Ledger) Spend(key string, window time.Duration, now time.Time) (Spend, error) {
	var sp Spend
	err := l.view("spend", func(tx *bucketstore.Tx) error {
		u, err := usageTx(tx, key, window, now)
		if err != nil {
			return err
		}
		sp = Spend{Key: key, Window: window, Used: u}
		first, cur := policyengine.WindowFirstBucket(window, now), policyengine.BucketIndex(window, now)
		p := usagePrefix(key, window)
		c := tx.Bucket(bucketUsage).Cursor()
		for k, _ := c.Seek(usageKey(p, first)); k != nil && bytes.HasPrefix(k, p) && len(k) == len(p)+8; k, _ = c.Next() {
			if _, _, b, ok := splitUsageKey(k); !ok || b > cur {
				break
			}
			sp.Buckets++
		}
		return nil
	})
	return sp, err
}

// SpendAll lists every counter with usage inside its window at now, sorted by key then window.
func (l *Ledger) SpendAll(now time.Time) ([]Spend, error) {
	type kw struct {
		k string
		w time.Duration
	}
	acc := map[kw]*Spend{}
	err := l.view("spend", func(tx *bucketstore.Tx) error {
		var v1 big.Int
		return tx.Bucket(bucketUsage).ForEach(func(k, v []byte) error {
			key, w, b, ok := splitUsageKey(k)
			if !ok {
				return corruptf("usage key %x malformed", k)
			}
			if b < policyengine.WindowFirstBucket(w, now) || b > policyengine.BucketIndex(w, now) {
				return nil
			}
			s := acc[kw{key, w}]
			if s == nil {
				s = &Spend{Key: key, Window: w, Used: new(big.Int)}
				acc[kw{key, w}] = s
			}
			s.Used.Add(s.Used, v1.SetBytes(v))
			s.Buckets++
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make([]Spend, 0, len(acc))
	for _, s := range acc {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Window < out[j].Window
	})
	return out, nil
}

// Record returns one payment record (ErrNotFound if absent).
func (l *Ledger) Record(id RecordID) (*PaymentRecord, error) {
	var r *PaymentRecord
	err := l.view("record", func(tx *bucketstore.Tx) error {
		var err error
		r, err = getRecord(tx, id)
		return err
	})
	return r, err
}

// Recent returns up to n records, newest first.
func (l *Ledger) Recent(n int) ([]*PaymentRecord, error) {
	var out []*PaymentRecord
	err := l.view("recent", func(tx *bucketstore.Tx) error {
		c := tx.Bucket(bucketRecords).Cursor()
		for k, v := c.Last(); k != nil && len(out) < n; k, v = c.Prev() {
			r, err := loadRecord(tx, RecordID(binary.BigEndian.Uint64(k)), v)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Pending returns the records still reserved (neither signed nor released), oldest first, at
// most n (n ≤ 0: all).
func (l *Ledger) Pending(n int) ([]*PaymentRecord, error) {
	var out []*PaymentRecord
	err := l.view("pending", func(tx *bucketstore.Tx) error {
		c := tx.Bucket(bucketPending).Cursor()
		for k, _ := c.First(); k != nil && (n <= 0 || len(out) < n); k, _ = c.Next() {
			if len(k) != 8 {
				return corruptf("pending key %x", k)
			}
			r, err := getRecord(tx, RecordID(binary.BigEndian.Uint64(k)))
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// ByTab returns the current record of every req_id used in (wallet, tab), in req_id order.
// With tab nil it covers every tab of the wallet. Records superseded after a release are found
// through Record or Recent.
func (l *Ledger) ByTab(wallet common.Address, tab *big.Int) ([]*PaymentRecord, error) {
	prefix := append([]byte(nil), wallet[:]...)
	if tab != nil {
		if tab.Sign() < 0 || tab.BitLen() > 256 {
			return nil, ErrInvalid
		}
		prefix = append(prefix, tab.FillBytes(make([]byte, 32))...)
	}
	var out []*PaymentRecord
	err := l.view("by_tab", func(tx *bucketstore.Tx) error {
		c := tx.Bucket(bucketReplay).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := parseReplay(k, v)
			if err != nil {
				return err
			}
			if e.status == replayPruned {
				continue // pruned (archived), see prune.go
			}
			r, err := getRecord(tx, e.id)
			if err != nil {
				if errors.Is(err, ErrNotFound) {
					return corruptf("replay entry %x points to missing record %d", k, e.id)
				}
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// GetState returns the committed value stored under key by PutState, or (nil, nil) if the key
// was never written (or was deleted). A stored empty value is returned as a non-nil empty slice.
func (l *Ledger) GetState(key string) (value []byte, err error) {
	err = l.view("get_state", func(tx *bucketstore.Tx) error {
		if v := tx.Bucket(bucketState).Get([]byte(key)); v != nil {
			value = append([]byte{}, v...)
		}
		return nil
	})
	return value, err
}

// StateWithPrefix returns every state key with the given prefix and its value, in key order
// (e.g. all pending approvals under "approval/").
func (l *Ledger) StateWithPrefix(prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := l.view("state_prefix", func(tx *bucketstore.Tx) error {
		c := tx.Bucket(bucketState).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			out[string(k)] = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// VerifyAudit verifies the whole audit chain (see audit.Verify). Corruption is returned as an
// error matching ErrCorrupt together with the report naming the first bad record.
func (l *Ledger) VerifyAudit() (audit.Report, error) {
	var rep audit.Report
	err := l.view("audit_verify", func(tx *bucketstore.Tx) error {
		var err error
		rep, err = VerifyTx(tx, l.clock())
		return err
	})
	return rep, err
}

// VerifyTx verifies the audit chain and, if it is unbroken, the state bound to it (see
// verifystate.go), in one read transaction; rep.State says how the state compared. A broken
// chain or a state difference is an error matching ErrCorrupt.
func VerifyTx(tx *bucketstore.Tx, now time.Time) (audit.Report, error) {
	rep, err := audit.VerifyTx(tx)
	if err != nil {
		return rep, err
	}
	return AddStateCheck(tx, rep, now)
}

// AddStateCheck runs VerifyStateTx and records its outcome in rep.
func AddStateCheck(tx *bucketstore.Tx, rep audit.Report, now time.Time) (audit.Report, error) {
	st, err := VerifyStateTx(tx, now)
	switch {
	case err != nil && errors.Is(err, ErrCorrupt):
		rep.OK, rep.State = false, err.Error()
		return rep, err
	case err != nil:
		return rep, err
	case st.Unbound != "":
		rep.State = st.Unbound
	default:
		rep.State = "ok"
	}
	return rep, nil
}

// ExportAudit writes audit records with seq ≥ from as JSON lines (see audit.Export).
func (l *Ledger) ExportAudit(w io.Writer, from uint64) error {
	return l.view("audit_export", func(tx *bucketstore.Tx) error { return audit.ExportTx(tx, w, from) })
}

// AuditRecord returns one audit record (ok=false if absent).
func (l *Ledger) AuditRecord(seq uint64) (audit.Record, bool, error) {
	var r audit.Record
	var ok bool
	err := l.view("audit_get", func(tx *bucketstore.Tx) error {
		var err error
		r, ok, err = audit.Get(tx, seq)
		return err
	})
	return r, ok, err
}

// AuditHead returns the last audit seq and its hash (anchor it outside the appliance).
func (l *Ledger) AuditHead() (uint64, [32]byte, error) {
	var seq uint64
	var h [32]byte
	err := l.view("audit_head", func(tx *bucketstore.Tx) error {
		var err error
		seq, h, err = audit.Head(tx)
		return err
	})
	return seq, h, err
}

// Backup writes a consistent copy of the whole ledger (ledger and audit log) into the new
// directory dir while the ledger keeps serving. The copy opens with Open like the original.
func (l *Ledger) Backup(dir string) error {
	l.mu.RLock()
	closed := l.closed
	l.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if err := l.db.Checkpoint(dir); err != nil {
		return &StoreError{Op: "backup", Err: err}
	}
	return nil
}

// PossiblySigned counts the intents that have neither a recorded signature nor a release. At
// start-up, before serving, these are the intents a crash interrupted: their signatures may have
// left, so their charges stand and an identical retry re-signs their digest (Reserve answers
// Resumable).
func (l *Ledger) PossiblySigned() (int, error) {
	n := 0
	err := l.view("pending", func(tx *bucketstore.Tx) error {
		c := tx.Bucket(bucketPending).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			n++
		}
		return c.Err()
	})
	return n, err
}
