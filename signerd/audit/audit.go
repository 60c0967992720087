// Package audit is signerd's append-only, hash-chained audit log.
//
// Every decision, signature, failed signing, released reservation, kill-switch change, policy
// reload, key operation and approval step becomes one Record. A record is encoded in
// deterministic CBOR (RFC 8949 core deterministic encoding, github.com/fxamacker/cbor/v2
// CoreDetEncOptions) and carries its sequence number, the appliance time, the SHA-256 hash of
// the previous record's encoded bytes (32 zero bytes for the first record) and the event.
//
// Storage. The chain lives in two buckets of the ledger's store (signerd/bucketstore): BucketRecords maps the 8-byte
// big-endian sequence number to the record's encoded bytes, and BucketHead holds the head
// (last sequence number and the hash of the last record). The audit package owns no file and no
// transaction: callers append inside their own read-write transaction, so a ledger change and
// the audit record describing it become durable in the same fsync:
//
//	err := db.Update(func(tx *bucketstore.Tx) error {
//	    // ... ledger writes ...
//	    _, err := audit.Append(tx, now, audit.Event{Kind: audit.KindSignature, ...})
//	    return err
//	})
//
// Verification (Verify, VerifyTx) walks the chain from the first record and reports the first
// bad record: a gap or reordering in the sequence, an undecodable or non-canonical encoding, an
// unknown kind, a previous-hash mismatch, or a head that does not match the last record.
// Corruption is reported as a *CorruptError, which matches ErrCorrupt with errors.Is.
// Export writes the chain as JSON lines (one object per record, with its hash).
//
// The chain detects accidental corruption and tampering by anyone who cannot rewrite every
// later record and the head. To detect a full rewrite or a truncation of the tail by someone with
// write access to the file, anchor the head outside the appliance (HeadInfo, printed by
// `signerctl audit head`) and later check the anchors (CheckAnchors, VerifyAnchored: the record
// with the anchor's seq must still exist and still have the anchor's hash).
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/signerd/signerd/signerd/bucketstore"
)

// Bucket names used in the store.
var (
	// BucketRecords maps 8-byte big-endian seq → deterministic CBOR of Record.
	BucketRecords = []byte("audit")
	// BucketHead holds key HeadKey → seq (8 bytes big-endian) ‖ SHA-256 of the last record (32 bytes).
	BucketHead = []byte("audit_head")
	// HeadKey is the single key of BucketHead.
	HeadKey = []byte("head")
)

// Kind says what an audit record is about.
type Kind string

// The record kinds.
const (
	// KindDecision is a policy decision: allow (with the reservation it made), deny or needs_approval.
	KindDecision Kind = "decision"
	// KindSignature is a signature made durable for a payment record.
	KindSignature Kind = "signature"
	// KindSigningFailed is a signing attempt that failed after its reservation.
	KindSigningFailed Kind = "signing_failed"
	// KindReservationReleased is a reservation released (charges refunded, replay key freed).
	KindReservationReleased Kind = "reservation_released"
	// KindKillSwitch is a kill-switch change (engage, resume request, resume).
	KindKillSwitch Kind = "kill_switch"
	// KindPolicyReload is a policy reload, good or rejected.
	KindPolicyReload Kind = "policy_reload"
	// KindKeyOp is a key operation (generate, import, retire).
	KindKeyOp Kind = "key_op"
	// KindApproval is an approval step (requested, approved, denied, expired).
	KindApproval Kind = "approval"
	// KindBroadcast is a signed on-chain transaction handed to (or refused by) the Ethereum RPC,
	// or its state learned afterwards (pending before signing, sent, failed, mined, dropped);
	// code says which, attrs carry tx_hash, nonce and request_id.
	KindBroadcast Kind = "broadcast"
	// KindRetention is a retention run: records up to a checkpoint archived and pruned (see
	// checkpoint.go).
	KindRetention Kind = "retention"
	// KindMigration is a ledger migrated from an earlier storage format; one record per
	// operator state key carried over binds its value to the chain.
	KindMigration Kind = "migration"
)

// Kinds lists every known kind.
var Kinds = []Kind{KindDecision, KindSignature, KindSigningFailed, KindReservationReleased,
	KindKillSwitch, KindPolicyReload, KindKeyOp, KindApproval, KindBroadcast, KindRetention, KindMigration}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool {
	for _, x := range Kinds {
		if k == x {
			return true
		}
	}
	return false
}

// Charge is one budget charge as recorded in the audit log.
type Charge struct {
	Key    string `cbor:"1,keyasint" json:"key"`              // budget key
	Window uint64 `cbor:"2,keyasint" json:"window_s"`         // window length in seconds
	Amount string `cbor:"3,keyasint" json:"amount"`           // decimal base units
	Bucket int64  `cbor:"4,keyasint,omitempty" json:"bucket"` // bucket index charged
}

// Event is the kind-specific content of a record. Only Kind is required; unused fields stay
// empty and are omitted from the encoding. Byte fields are exported to JSON as 0x-hex.
type Event struct {
	Kind       Kind              `cbor:"1,keyasint"`
	Decision   string            `cbor:"2,keyasint,omitempty"`  // allow | deny | needs_approval
	Code       string            `cbor:"3,keyasint,omitempty"`  // machine-readable code (denial or failure)
	Rule       string            `cbor:"4,keyasint,omitempty"`  // policy rule id
	Reason     string            `cbor:"5,keyasint,omitempty"`  // human reason
	Principal  string            `cbor:"6,keyasint,omitempty"`  // caller principal
	Agent      string            `cbor:"7,keyasint,omitempty"`  // agent the principal maps to
	Wallet     string            `cbor:"8,keyasint,omitempty"`  // 0x address
	TabID      string            `cbor:"9,keyasint,omitempty"`  // decimal
	ReqID      string            `cbor:"10,keyasint,omitempty"` // decimal
	PolicyHash []byte            `cbor:"11,keyasint,omitempty"` // policy content hash
	Digest     []byte            `cbor:"12,keyasint,omitempty"` // signed digest
	Signature  []byte            `cbor:"13,keyasint,omitempty"` // 65-byte signature
	RecordID   uint64            `cbor:"14,keyasint,omitempty"` // ledger payment record id
	Operator   string            `cbor:"15,keyasint,omitempty"` // operator who acted
	ApprovalID string            `cbor:"16,keyasint,omitempty"` // approval id
	ClaimsHash []byte            `cbor:"17,keyasint,omitempty"` // SHA-256 of the canonical claims
	Scheme     string            `cbor:"18,keyasint,omitempty"` // eip712 | eip191
	Charges    []Charge          `cbor:"19,keyasint,omitempty"` // budget charges made or refunded
	Attrs      map[string]string `cbor:"20,keyasint,omitempty"` // other facts (key URI, old/new policy hash, ...)
}

// Record is one link of the chain.
type Record struct {
	Seq   uint64 `cbor:"1,keyasint"` // 1, 2, 3, ...
	Time  int64  `cbor:"2,keyasint"` // appliance time, Unix nanoseconds
	Prev  []byte `cbor:"3,keyasint"` // SHA-256 of the previous record's bytes; zeros for seq 1
	Event Event  `cbor:"4,keyasint"`
	// Hash is the SHA-256 of this record's encoded bytes. It is not part of the encoding.
	Hash [32]byte `cbor:"-"`
}

// ErrCorrupt is the class of every corruption error (match with errors.Is). It is the store's
// corruption class (bucketstore.ErrCorrupt): a damaged store file and an altered record are
// both corruption.
var ErrCorrupt = bucketstore.ErrCorrupt

// CorruptError says which record is bad and why.
type CorruptError struct {
	Seq     uint64 // the first bad record (or the position where it was expected)
	Problem string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("audit: corrupt record at seq %d: %s", e.Seq, e.Problem)
}

// Is makes CorruptError match ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	if decMode, err = (cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		MaxNestedLevels:   8,
	}).DecMode(); err != nil {
		panic(err)
	}
}

// Encode returns the deterministic CBOR of r (Hash excluded).
func Encode(r *Record) ([]byte, error) { return encMode.Marshal(r) }

// Decode parses one stored record, checks that its bytes are the canonical encoding, and sets
// Hash. Any failure is a *CorruptError.
func Decode(seq uint64, b []byte) (Record, error) {
	var r Record
	if err := decMode.Unmarshal(b, &r); err != nil {
		return Record{}, &CorruptError{Seq: seq, Problem: "undecodable record: " + err.Error()}
	}
	again, err := encMode.Marshal(&r)
	if err != nil || !bytes.Equal(again, b) {
		return Record{}, &CorruptError{Seq: seq, Problem: "record is not in canonical encoding"}
	}
	r.Hash = sha256.Sum256(b)
	return r, nil
}

// Init creates the audit buckets if they do not exist.
func Init(tx *bucketstore.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(BucketRecords); err != nil {
		return fmt.Errorf("audit: create bucket: %w", err)
	}
	if _, err := tx.CreateBucketIfNotExists(BucketHead); err != nil {
		return fmt.Errorf("audit: create bucket: %w", err)
	}
	return nil
}

// Head returns the last sequence number and the hash of the last record (0 and zeros when the
// log is empty).
func Head(tx *bucketstore.Tx) (uint64, [32]byte, error) {
	var h [32]byte
	hb := tx.Bucket(BucketHead)
	if hb == nil {
		return 0, h, fmt.Errorf("audit: not initialised (missing bucket %q)", BucketHead)
	}
	v := hb.Get(HeadKey)
	if v == nil {
		return 0, h, nil
	}
	if len(v) != 40 {
		return 0, h, &CorruptError{Seq: 0, Problem: fmt.Sprintf("head has %d bytes, want 40", len(v))}
	}
	copy(h[:], v[8:])
	return binary.BigEndian.Uint64(v[:8]), h, nil
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// Append adds ev to the chain inside tx (which must be writable) with time now and returns the
// record written. It fails if ev.Kind is unknown; a failed Append writes nothing.
func Append(tx *bucketstore.Tx, now time.Time, ev Event) (Record, error) {
	if !ev.Kind.Valid() {
		return Record{}, fmt.Errorf("audit: unknown kind %q", ev.Kind)
	}
	rb, hb := tx.Bucket(BucketRecords), tx.Bucket(BucketHead)
	if rb == nil || hb == nil {
		return Record{}, errors.New("audit: not initialised")
	}
	seq, prev, err := Head(tx)
	if err != nil {
		return Record{}, err
	}
	r := Record{Seq: seq + 1, Time: now.UnixNano(), Prev: prev[:], Event: ev}
	b, err := Encode(&r)
	if err != nil {
		return Record{}, fmt.Errorf("audit: encode: %w", err)
	}
	r.Hash = sha256.Sum256(b)
	head := make([]byte, 40)
	binary.BigEndian.PutUint64(head, r.Seq)
	copy(head[8:], r.Hash[:])
	if err := rb.Put(seqKey(r.Seq), b); err != nil {
		return Record{}, fmt.Errorf("audit: put: %w", err)
	}
	if err := hb.Put(HeadKey, head); err != nil {
		return Record{}, fmt.Errorf("audit: put head: %w", err)
	}
	return r, nil
}

// Get reads and decodes record seq. A missing record returns ok=false.
func Get(tx *bucketstore.Tx, seq uint64) (r Record, ok bool, err error) {
	rb := tx.Bucket(BucketRecords)
	if rb == nil {
		return Record{}, false, errors.New("audit: not initialised")
	}
	v := rb.Get(seqKey(seq))
	if v == nil {
		return Record{}, false, nil
	}
	r, err = Decode(seq, v)
	return r, err == nil, err
}

// Report is the outcome of a verification.
type Report struct {
	OK       bool   `json:"ok"`
	Records  uint64 `json:"records"`   // records checked and found good
	HeadSeq  uint64 `json:"head_seq"`  // last good seq
	HeadHash string `json:"head_hash"` // 0x-hex hash of the last good record
	// PrunedThrough is the prune checkpoint's seq (0: nothing pruned): records up to it were
	// archived and deleted, and the chain is verified from CheckpointHash.
	PrunedThrough  uint64        `json:"pruned_through,omitempty"`
	CheckpointHash string        `json:"checkpoint_hash,omitempty"`
	FirstBad       *CorruptError `json:"first_bad,omitempty"` // nil when the chain is unbroken
	// Anchors holds the result of each anchor checked (VerifyAnchored); OK is false if any failed.
	Anchors []AnchorResult `json:"anchors,omitempty"`
	// State is the ledger's check of the state bound to the chain (ledger.VerifyState): "ok",
	// a note why it was not compared, or the first difference (then OK is false). Empty when
	// not checked.
	State string `json:"state,omitempty"`
}

// MarshalJSON renders a CorruptError for reports.
func (e *CorruptError) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Seq     uint64 `json:"seq"`
		Problem string `json:"problem"`
	}{e.Seq, e.Problem})
}

// Verify walks the whole chain in a read transaction. On corruption it returns the report
// (OK=false, FirstBad set) and FirstBad as the error; other errors are I/O faults.
func Verify(db *bucketstore.DB) (rep Report, err error) {
	err = db.View(func(tx *bucketstore.Tx) error {
		rep, err = VerifyTx(tx)
		return err
	})
	return rep, err
}

// VerifyTx is Verify inside an existing transaction.
func VerifyTx(tx *bucketstore.Tx) (Report, error) {
	rep := Report{HeadHash: "0x" + hex.EncodeToString(make([]byte, 32))}
	fail := func(ce *CorruptError) (Report, error) {
		rep.FirstBad = ce
		return rep, ce
	}
	rb := tx.Bucket(BucketRecords)
	if rb == nil || tx.Bucket(BucketHead) == nil {
		return fail(&CorruptError{Seq: 1, Problem: "audit buckets missing"})
	}
	cp, err := CheckpointTx(tx)
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			return fail(ce)
		}
		return rep, err
	}
	// After a prune the chain starts at the checkpoint: the first remaining record's prev hash
	// must be the checkpoint's hash.
	prev, prevPrev := cp.Hash, [32]byte{}
	want := cp.Seq + 1
	rep.HeadSeq = cp.Seq
	rep.HeadHash = "0x" + hex.EncodeToString(prev[:])
	if cp.Seq > 0 {
		rep.PrunedThrough, rep.CheckpointHash = cp.Seq, rep.HeadHash
	}
	c := rb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return fail(&CorruptError{Seq: want, Problem: fmt.Sprintf("malformed key %x", k)})
		}
		if got := binary.BigEndian.Uint64(k); got != want {
			return fail(&CorruptError{Seq: want, Problem: fmt.Sprintf("record %d missing (next key is %d)", want, got)})
		}
		r, err := Decode(want, v)
		if err != nil {
			return fail(err.(*CorruptError))
		}
		if r.Seq != want {
			return fail(&CorruptError{Seq: want, Problem: fmt.Sprintf("record stored at %d says seq %d (reordered)", want, r.Seq)})
		}
		if !bytes.Equal(r.Prev, prev[:]) {
			if want == 1 {
				return fail(&CorruptError{Seq: 1, Problem: "first record's prev hash is not zero"})
			}
			if want == cp.Seq+1 {
				return fail(&CorruptError{Seq: want, Problem: fmt.Sprintf("first record after the prune checkpoint (seq %d) does not link to the checkpoint hash", cp.Seq)})
			}
			// The link want-1 → want is broken: either record want-1 was altered, or record
			// want was (its prev field, or it was replaced). If want's own forward link holds,
			// want is consistent with the rest of the chain and want-1 is the altered one.
			if forwardLinkHolds(tx, r) {
				rep.Records, rep.HeadSeq = want-2-cp.Seq, want-2
				if want-2 > 0 {
					rep.HeadHash = "0x" + hex.EncodeToString(prevPrev[:])
				} else {
					rep.HeadHash = "0x" + hex.EncodeToString(make([]byte, 32))
				}
				return fail(&CorruptError{Seq: want - 1, Problem: fmt.Sprintf("record %d was altered: its hash does not match record %d's prev hash", want-1, want)})
			}
			return fail(&CorruptError{Seq: want, Problem: fmt.Sprintf("record %d was altered or replaced: its prev hash does not match record %d", want, want-1)})
		}
		if !r.Event.Kind.Valid() {
			return fail(&CorruptError{Seq: want, Problem: fmt.Sprintf("unknown kind %q", r.Event.Kind)})
		}
		prevPrev, prev = prev, r.Hash
		rep.Records, rep.HeadSeq = want-cp.Seq, want
		rep.HeadHash = "0x" + hex.EncodeToString(prev[:])
		want++
	}
	seq, h, err := Head(tx)
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			ce.Seq = want
			return fail(ce)
		}
		return rep, err
	}
	if seq > rep.HeadSeq {
		return fail(&CorruptError{Seq: rep.HeadSeq + 1, Problem: fmt.Sprintf("head says seq %d but the chain ends at %d (records missing at the end)", seq, rep.HeadSeq)})
	}
	if seq < cp.Seq {
		return fail(&CorruptError{Seq: seq, Problem: fmt.Sprintf("head says seq %d, before the prune checkpoint (seq %d)", seq, cp.Seq)})
	}
	if seq < rep.HeadSeq {
		rep.Records, rep.HeadSeq = seq-cp.Seq, seq
		return fail(&CorruptError{Seq: seq + 1, Problem: fmt.Sprintf("record %d is beyond the head (seq %d): appended outside the log", seq+1, seq)})
	}
	if h != prev {
		if rep.Records == 0 { // nothing after the checkpoint, and the head disagrees with it
			return fail(&CorruptError{Seq: seq, Problem: "head does not match the prune checkpoint"})
		}
		rep.Records, rep.HeadSeq = rep.Records-1, rep.HeadSeq-1
		rep.HeadHash = "0x" + hex.EncodeToString(prevPrev[:])
		return fail(&CorruptError{Seq: seq, Problem: "last record does not match the head hash (altered)"})
	}
	rep.OK = true
	return rep, nil
}

// forwardLinkHolds reports whether r's hash is the prev hash of the next record (or, for the
// last record, the head hash).
func forwardLinkHolds(tx *bucketstore.Tx, r Record) bool {
	if v := tx.Bucket(BucketRecords).Get(seqKey(r.Seq + 1)); v != nil {
		next, err := Decode(r.Seq+1, v)
		return err == nil && bytes.Equal(next.Prev, r.Hash[:])
	}
	seq, h, err := Head(tx)
	return err == nil && seq == r.Seq && h == r.Hash
}

// jsonLine is the export form of one record.
type jsonLine struct {
	Seq        uint64            `json:"seq"`
	Time       string            `json:"time"`
	Hash       string            `json:"hash"`
	Prev       string            `json:"prev"`
	Kind       Kind              `json:"kind"`
	Decision   string            `json:"decision,omitempty"`
	Code       string            `json:"code,omitempty"`
	Rule       string            `json:"rule,omitempty"`
	Reason     string            `json:"reason,omitempty"`
	Principal  string            `json:"principal,omitempty"`
	Agent      string            `json:"agent,omitempty"`
	Wallet     string            `json:"wallet,omitempty"`
	TabID      string            `json:"tab_id,omitempty"`
	ReqID      string            `json:"req_id,omitempty"`
	PolicyHash string            `json:"policy_hash,omitempty"`
	Digest     string            `json:"digest,omitempty"`
	Signature  string            `json:"signature,omitempty"`
	RecordID   uint64            `json:"record_id,omitempty"`
	Operator   string            `json:"operator,omitempty"`
	ApprovalID string            `json:"approval_id,omitempty"`
	ClaimsHash string            `json:"claims_hash,omitempty"`
	Scheme     string            `json:"scheme,omitempty"`
	Charges    []Charge          `json:"charges,omitempty"`
	Attrs      map[string]string `json:"attrs,omitempty"`
}

func hx(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return "0x" + hex.EncodeToString(b)
}

// JSON returns the export form of r (the object Export writes on one line).
func (r Record) JSON() ([]byte, error) {
	e := r.Event
	return json.Marshal(jsonLine{
		Seq: r.Seq, Time: time.Unix(0, r.Time).UTC().Format(time.RFC3339Nano),
		Hash: hx(r.Hash[:]), Prev: hx(r.Prev), Kind: e.Kind, Decision: e.Decision, Code: e.Code,
		Rule: e.Rule, Reason: e.Reason, Principal: e.Principal, Agent: e.Agent, Wallet: e.Wallet,
		TabID: e.TabID, ReqID: e.ReqID, PolicyHash: hx(e.PolicyHash), Digest: hx(e.Digest),
		Signature: hx(e.Signature), RecordID: e.RecordID, Operator: e.Operator,
		ApprovalID: e.ApprovalID, ClaimsHash: hx(e.ClaimsHash), Scheme: e.Scheme,
		Charges: e.Charges, Attrs: e.Attrs,
	})
}

// Export writes records with seq ≥ from (from 0 or 1 means all) as JSON lines to w, in one read
// transaction. It stops at the first undecodable record and returns its *CorruptError; run
// Verify for a full chain check. After a prune the log starts at the checkpoint + 1: an export
// from at or before the checkpoint starts there (seqs have no gaps otherwise), and that first
// record's prev is the checkpoint hash; callers that must tell the reader (signerctl audit
// export, the admin endpoint) compare the first seq with from or read CheckpointTx.
func Export(db *bucketstore.DB, w io.Writer, from uint64) error {
	return db.View(func(tx *bucketstore.Tx) error { return ExportTx(tx, w, from) })
}

// ExportTx is Export inside an existing transaction.
func ExportTx(tx *bucketstore.Tx, w io.Writer, from uint64) error {
	rb := tx.Bucket(BucketRecords)
	if rb == nil {
		return errors.New("audit: not initialised")
	}
	c := rb.Cursor()
	for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
		seq := uint64(0)
		if len(k) == 8 {
			seq = binary.BigEndian.Uint64(k)
		}
		r, err := Decode(seq, v)
		if err != nil {
			return err
		}
		line, err := r.JSON()
		if err != nil {
			return err
		}
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			return fmt.Errorf("audit: export: %w", err)
		}
	}
	return nil
}
