package ledger

// State bound to the audit chain. Every change to the state that decides — a payment record's
// status, claims, digest, charges and signature; replay entries; budget usage; operator state
// (kill switch, approvals, collateral marks) — is written in the same transaction as the audit
// record that describes it, and that record carries everything needed to recompute the change:
// a reservation's decision (record id, wallet, tab, req, claims hash, digest, charges with their
// buckets), a signature, a release (the charges refunded), a state write (key and SHA-256 of the
// value). VerifyState replays the chain and compares what it implies with what is stored, so an
// edit of any of it (a usage entry lowered or deleted, a replay entry deleted, a record's status
// or signature changed, a state value replaced) is reported naming what differs.
//
// A prune deletes the chain's beginning. It therefore stores, in the same transaction, the state
// the chain implied at that moment (minus the pruned records) as the base (meta key
// state_base) and binds it to the chain: the retention record carries the base's SHA-256 and
// the SHA-256 of every pruned replay entry. VerifyState starts from the base and replays the
// records after the retention record.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/bucketstore"
)

// Attribute names the ledger adds to audit records to bind state.
const (
	attrStateKey     = "state_key"         // PutState: the key written
	attrStateSHA256  = "state_sha256"      // PutState: SHA-256 of the value ("" when deleted)
	attrBaseSHA256   = "state_base_sha256" // retention: SHA-256 of the stored base
	attrPrunedSHA256 = "pruned_replay_sha256"
)

var (
	stateBaseKey = []byte("state_base")
	emptySHA256  = sha256.Sum256(nil)
)

// expRecord is what the chain says about one payment record.
type expRecord struct {
	Status  byte         `cbor:"1,keyasint"`
	Key     []byte       `cbor:"2,keyasint"` // replay key
	Claims  []byte       `cbor:"3,keyasint"`
	Digest  []byte       `cbor:"4,keyasint"`
	Sig     []byte       `cbor:"5,keyasint,omitempty"`
	Charges []diskCharge `cbor:"6,keyasint,omitempty"` // Budget unused; Window in ns
}

// expState is the state the chain implies (also the stored base's form).
type expState struct {
	Seq     uint64                `cbor:"1,keyasint"` // the last audit record applied
	Records map[uint64]*expRecord `cbor:"2,keyasint"`
	Replay  map[string]uint64     `cbor:"3,keyasint"` // replay key → record id (status follows the record)
	Usage   map[string][]byte     `cbor:"4,keyasint"` // usage key → amount
	State   map[string][]byte     `cbor:"5,keyasint"` // state key → SHA-256 of the value (empty: deleted)
	Pruned  []byte                `cbor:"6,keyasint,omitempty"`
}

func newExpState() *expState {
	return &expState{Records: map[uint64]*expRecord{}, Replay: map[string]uint64{}, Usage: map[string][]byte{}, State: map[string][]byte{}}
}

// StateReport is the outcome of VerifyState.
type StateReport struct {
	FromSeq uint64 `json:"from_seq"` // replay started after this audit record (0: from the start)
	// Unbound, when set, says why the state could not be compared (a ledger pruned by a
	// version that did not store a state base); the chain itself is still verified.
	Unbound      string `json:"unbound,omitempty"`
	Records      int    `json:"records"`
	ReplayKeys   int    `json:"replay_keys"`
	UsageBuckets int    `json:"usage_buckets"`
	StateKeys    int    `json:"state_keys"`
	OK           bool   `json:"ok"`
}

// VerifyState checks that the stored state is the state the audit chain implies (see the file
// comment). A difference is a *CorruptError naming it; usage buckets older than their window at
// now are not compared (the committer sweeps them).
func (l *Ledger) VerifyState(now time.Time) (StateReport, error) {
	var rep StateReport
	err := l.view("verify_state", func(tx *bucketstore.Tx) error {
		var err error
		rep, err = VerifyStateTx(tx, now)
		return err
	})
	return rep, err
}

// VerifyStateTx is VerifyState inside a read transaction (for offline tools).
func VerifyStateTx(tx *bucketstore.Tx, now time.Time) (StateReport, error) {
	if tx.Bucket(bucketMeta).Get(stateBaseKey) == nil {
		if cp, err := audit.CheckpointTx(tx); err != nil {
			return StateReport{}, err
		} else if cp.Seq > 0 {
			return StateReport{OK: true, Unbound: "pruned by a version that kept no state base: state not compared"}, nil
		}
	}
	exp, err := impliedState(tx)
	if err != nil {
		return StateReport{}, err
	}
	rep := StateReport{FromSeq: exp.from, Records: len(exp.Records), ReplayKeys: len(exp.Replay),
		UsageBuckets: len(exp.Usage), StateKeys: len(exp.State)}
	for _, check := range []func(*bucketstore.Tx, *expState, time.Time) error{checkRecords, checkReplay, checkUsage, checkState} {
		if err := check(tx, &exp.expState, now); err != nil {
			return rep, err
		}
	}
	rep.OK = true
	return rep, nil
}

type implied struct {
	expState
	from uint64
}

// impliedState loads the base (if a prune stored one), checks it against its retention record,
// and applies every later audit record.
func impliedState(tx *bucketstore.Tx) (*implied, error) {
	exp := &implied{expState: *newExpState()}
	if v := tx.Bucket(bucketMeta).Get(stateBaseKey); v != nil {
		if err := decMode.Unmarshal(v, &exp.expState); err != nil {
			return nil, corruptf("stored state base undecodable: %v", err)
		}
		if err := exp.hexKeys(false); err != nil {
			return nil, corruptf("stored state base: %v", err)
		}
		exp.from = exp.Seq
		r, ok, err := audit.Get(tx, exp.Seq)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(v)
		if !ok || r.Event.Kind != audit.KindRetention || r.Event.Attrs[attrBaseSHA256] != hex.EncodeToString(sum[:]) {
			return nil, corruptf("stored state base does not match retention audit record %d", exp.Seq)
		}
		if exp.Records == nil || exp.Replay == nil || exp.Usage == nil || exp.State == nil {
			return nil, corruptf("stored state base incomplete")
		}
	}
	c := tx.Bucket(audit.BucketRecords).Cursor()
	for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, exp.from+1)); k != nil; k, v = c.Next() {
		r, err := audit.Decode(binary.BigEndian.Uint64(k), v)
		if err != nil {
			return nil, err
		}
		if err := exp.apply(r); err != nil {
			return nil, err
		}
	}
	return exp, c.Err()
}

// apply changes the implied state by one audit record.
func (s *expState) apply(r audit.Record) error {
	ev := r.Event
	s.Seq = r.Seq
	bad := func(what string) error { return corruptf("audit record %d: %s", r.Seq, what) }
	switch {
	case ev.Kind == audit.KindDecision && ev.Decision == "allow" && ev.RecordID != 0 && ev.Code == "" && len(ev.Digest) == 32:
		key, err := eventReplayKey(ev)
		if err != nil {
			return bad(err.Error())
		}
		rec := &expRecord{Status: StatusReserved.byte(), Key: key, Claims: ev.ClaimsHash, Digest: ev.Digest}
		for _, c := range ev.Charges {
			dc, err := auditCharge(c)
			if err != nil {
				return bad(err.Error())
			}
			rec.Charges = append(rec.Charges, dc)
			s.addUsage(dc, +1)
		}
		s.Records[ev.RecordID] = rec
		s.Replay[string(key)] = ev.RecordID
	case ev.Kind == audit.KindSignature && ev.RecordID != 0:
		if rec := s.Records[ev.RecordID]; rec != nil && rec.Status == StatusReserved.byte() {
			rec.Status, rec.Sig = StatusSigned.byte(), ev.Signature
		}
	case ev.Kind == audit.KindReservationReleased && ev.RecordID != 0:
		if rec := s.Records[ev.RecordID]; rec != nil && rec.Status == StatusReserved.byte() {
			rec.Status = StatusReleased.byte()
			for _, c := range rec.Charges {
				s.addUsage(c, -1)
			}
		}
	case ev.Attrs[attrStateKey] != "":
		if h := ev.Attrs[attrStateSHA256]; h == "" {
			s.State[ev.Attrs[attrStateKey]] = []byte{} // deleted
		} else if b, err := hex.DecodeString(h); err == nil && len(b) == 32 {
			s.State[ev.Attrs[attrStateKey]] = b
		} else {
			return bad("state hash malformed")
		}
	}
	return nil
}

func eventReplayKey(ev audit.Event) ([]byte, error) {
	tab, ok1 := new(big.Int).SetString(ev.TabID, 10)
	req, ok2 := new(big.Int).SetString(ev.ReqID, 10)
	if !ok1 || !ok2 || !common.IsHexAddress(ev.Wallet) || tab.Sign() < 0 || req.Sign() < 0 || tab.BitLen() > 256 || req.BitLen() > 256 {
		return nil, fmt.Errorf("reservation without a valid wallet, tab and req")
	}
	return replayKey(common.HexToAddress(ev.Wallet), tab, req), nil
}

func auditCharge(c audit.Charge) (diskCharge, error) {
	a, ok := new(big.Int).SetString(c.Amount, 10)
	if !ok || a.Sign() < 0 {
		return diskCharge{}, fmt.Errorf("charge amount %q", c.Amount)
	}
	return diskCharge{Key: c.Key, Window: int64(time.Duration(c.Window) * time.Second), Bucket: c.Bucket, Amount: a.Bytes()}, nil
}

func (s *expState) addUsage(c diskCharge, sign int) {
	k := string(usageKey(usagePrefix(c.Key, time.Duration(c.Window)), c.Bucket))
	v := new(big.Int).SetBytes(s.Usage[k])
	d := new(big.Int).SetBytes(c.Amount)
	if sign < 0 {
		d.Neg(d)
	}
	v.Add(v, d)
	if v.Sign() <= 0 {
		delete(s.Usage, k)
		return
	}
	s.Usage[k] = v.Bytes()
}

// checkRecords compares every stored record with the chain, and the pending index with the
// records' statuses.
func checkRecords(tx *bucketstore.Tx, exp *expState, _ time.Time) error {
	seen := 0
	c := tx.Bucket(bucketRecords).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return corruptf("record key %x", k)
		}
		id := binary.BigEndian.Uint64(k)
		rec, err := loadRecord(tx, RecordID(id), v)
		if err != nil {
			return err
		}
		want := exp.Records[id]
		if want == nil {
			return corruptf("payment record %d has no reservation in the audit log", id)
		}
		if err := sameRecord(rec, want); err != nil {
			return corruptf("payment record %d differs from the audit log: %v", id, err)
		}
		if isPending(tx, rec.ID) != (rec.Status == StatusReserved) {
			return corruptf("pending index disagrees with record %d (%s)", id, rec.Status)
		}
		seen++
	}
	if err := c.Err(); err != nil {
		return err
	}
	if seen != len(exp.Records) {
		return corruptf("%d payment records stored, the audit log has %d", seen, len(exp.Records))
	}
	return nil
}

func sameRecord(rec *PaymentRecord, want *expRecord) error {
	switch {
	case rec.Status.byte() != want.Status:
		return fmt.Errorf("status %s", rec.Status)
	case !bytes.Equal(replayKey(rec.Wallet, rec.TabID, rec.ReqID), want.Key):
		return fmt.Errorf("wallet, tab or req")
	case !bytes.Equal(rec.ClaimsHash[:], want.Claims) || !bytes.Equal(rec.Digest[:], want.Digest):
		return fmt.Errorf("claims or digest")
	case !bytes.Equal(rec.Signature, want.Sig):
		return fmt.Errorf("signature")
	case len(rec.Charges) != len(want.Charges):
		return fmt.Errorf("charges")
	}
	for i, c := range rec.Charges {
		w := want.Charges[i]
		if c.Key != w.Key || int64(c.Window) != w.Window || c.Bucket != w.Bucket || !bytes.Equal(c.Amount.Bytes(), w.Amount) {
			return fmt.Errorf("charge %d", i)
		}
	}
	return nil
}

// checkReplay compares the replay entries with the chain; entries of pruned records must hash to
// the base's digest.
func checkReplay(tx *bucketstore.Tx, exp *expState, _ time.Time) error {
	pruned := sha256.New()
	live := 0
	c := tx.Bucket(bucketReplay).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		e, err := parseReplay(k, v)
		if err != nil {
			return err
		}
		if e.status == replayPruned {
			pruned.Write(k)
			pruned.Write(v)
			continue
		}
		id, ok := exp.Replay[string(k)]
		rec := exp.Records[id]
		if !ok || rec == nil || id != uint64(e.id) || !bytes.Equal(rec.Claims, e.claims[:]) || e.status != replayStatus(rec.Status) {
			return corruptf("replay entry %x (record %d) differs from the audit log", k, e.id)
		}
		live++
	}
	if err := c.Err(); err != nil {
		return err
	}
	if live != len(exp.Replay) {
		return corruptf("%d replay entries stored, the audit log implies %d: an entry is missing", live, len(exp.Replay))
	}
	if exp.Pruned == nil && !bytes.Equal(pruned.Sum(nil), emptySHA256[:]) {
		return corruptf("replay entries marked pruned, but nothing was ever pruned")
	}
	if exp.Pruned != nil && !bytes.Equal(pruned.Sum(nil), exp.Pruned) {
		return corruptf("replay entries of pruned records differ from the retention record's digest")
	}
	return nil
}

// replayStatus is the replay entry status byte a record's status implies ('r' stays while the
// record is signed: the signature lives in the sigs bucket).
func replayStatus(s byte) byte {
	if s == StatusReleased.byte() {
		return s
	}
	return StatusReserved.byte()
}

// checkUsage compares every usage bucket inside its window at now with the chain.
func checkUsage(tx *bucketstore.Tx, exp *expState, now time.Time) error {
	inWindow := func(k []byte) bool {
		_, w, b, ok := splitUsageKey(k)
		return ok && (w == 0 || b >= policyengine.WindowFirstBucket(w, now))
	}
	stored := 0
	c := tx.Bucket(bucketUsage).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if !inWindow(k) {
			continue
		}
		if !bytes.Equal(v, exp.Usage[string(k)]) {
			return corruptf("budget usage %s differs from the audit log (stored %s, implied %s)", usageName(k),
				new(big.Int).SetBytes(v), new(big.Int).SetBytes(exp.Usage[string(k)]))
		}
		stored++
	}
	if err := c.Err(); err != nil {
		return err
	}
	want := 0
	for k := range exp.Usage {
		if inWindow([]byte(k)) {
			want++
		}
	}
	if stored != want {
		return corruptf("%d budget usage buckets stored in their window, the audit log implies %d", stored, want)
	}
	return nil
}

func usageName(k []byte) string {
	key, w, b, _ := splitUsageKey(k)
	return key + " window " + w.String() + " bucket " + strconv.FormatInt(b, 10)
}

// checkState compares operator state with the hashes the chain recorded: every stored key
// must be one the chain wrote (or a migration carried over), with its value.
func checkState(tx *bucketstore.Tx, exp *expState, _ time.Time) error {
	c := tx.Bucket(bucketState).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if _, ok := exp.State[string(k)]; !ok {
			return corruptf("operator state %q was written outside the audit log", k)
		}
	}
	if err := c.Err(); err != nil {
		return err
	}
	keys := make([]string, 0, len(exp.State))
	for k := range exp.State {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b := tx.Bucket(bucketState)
	for _, k := range keys {
		v, want := b.Get([]byte(k)), exp.State[k]
		switch {
		case len(want) == 0 && v != nil:
			return corruptf("operator state %q is present but the audit log deleted it", k)
		case len(want) == 0:
		case v == nil:
			return corruptf("operator state %q is missing", k)
		default:
			if h := sha256.Sum256(v); !bytes.Equal(h[:], want) {
				return corruptf("operator state %q differs from the audit log", k)
			}
		}
	}
	return nil
}

// pruneBase is the state the chain implies before a prune (nil for a ledger pruned before state
// binding: it stays unbound).
func pruneBase(tx *bucketstore.Tx) (*expState, error) {
	if tx.Bucket(bucketMeta).Get(stateBaseKey) == nil {
		if cp, err := audit.CheckpointTx(tx); err != nil || cp.Seq > 0 {
			return nil, err
		}
	}
	exp, err := impliedState(tx)
	if err != nil {
		return nil, err
	}
	return &exp.expState, nil
}

// forget drops a pruned record and its replay entry from the base.
func (s *expState) forget(id uint64) {
	if s == nil {
		return
	}
	if rec := s.Records[id]; rec != nil && s.Replay[string(rec.Key)] == id {
		delete(s.Replay, string(rec.Key))
	}
	delete(s.Records, id)
}

// storeBase stores the base for the retention record about to be appended and returns the
// attributes that bind it (none for an unbound ledger).
func storeBase(tx *bucketstore.Tx, s *expState) (map[string]string, error) {
	if s == nil {
		return map[string]string{}, nil
	}
	seq, _, err := audit.Head(tx)
	if err != nil {
		return nil, err
	}
	s.Seq = seq + 1 // the retention record's
	pruned := sha256.New()
	c := tx.Bucket(bucketReplay).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(v) == 41 && v[40] == replayPruned {
			pruned.Write(k)
			pruned.Write(v)
		}
	}
	if err := c.Err(); err != nil {
		return nil, err
	}
	s.Pruned = pruned.Sum(nil)
	if err := s.hexKeys(true); err != nil {
		return nil, err
	}
	b, err := encMode.Marshal(s)
	if err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketMeta).Put(stateBaseKey, b); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	return map[string]string{attrBaseSHA256: hex.EncodeToString(sum[:]), attrPrunedSHA256: hex.EncodeToString(s.Pruned)}, nil
}

// hexKeys turns the binary map keys into hex for the stored form (CBOR text keys are UTF-8),
// or back.
func (s *expState) hexKeys(encode bool) error {
	var bad error
	conv := func(k string) string {
		if encode {
			return hex.EncodeToString([]byte(k))
		}
		b, err := hex.DecodeString(k)
		if err != nil && bad == nil {
			bad = fmt.Errorf("key %q is not hex", k)
		}
		return string(b)
	}
	s.Replay = rekey(s.Replay, conv)
	s.Usage = rekey(s.Usage, conv)
	s.State = rekey(s.State, conv)
	return bad
}

func rekey[V any](m map[string]V, conv func(string) string) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[conv(k)] = v
	}
	return out
}
