package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"
)

// Retention. Records 1..N may be deleted once they are archived (PruneTx): the prune
// checkpoint (N, hash of record N) is stored in BucketCheckpoint, Verify then checks the chain
// from it (record N+1's prev hash must be the checkpoint hash), and anchors at or before N are
// reported as AnchorPruned unless they can be checked (the checkpoint itself). The archive, JSON
// lines as Export writes them, is checked offline with ParseJSONRecord and ChainCheck: its
// records must chain and its last hash must be the checkpoint hash.

var (
	// BucketCheckpoint holds key CheckpointKey → seq (8 bytes big-endian) ‖ SHA-256 of record seq
	// (32 bytes): the last record pruned. Absent when nothing was ever pruned.
	BucketCheckpoint = []byte("audit_checkpoint")
	// CheckpointKey is the single key of BucketCheckpoint.
	CheckpointKey = []byte("checkpoint")
)

// Checkpoint is the last pruned record: its seq and hash. The zero value (seq 0, zero hash)
// means nothing was pruned: the chain starts at seq 1 with a zero prev hash.
type Checkpoint = Anchor

// CheckpointTx reads the prune checkpoint (zero when nothing was pruned). A malformed value
// is a *CorruptError.
func CheckpointTx(tx *bucketstore.Tx) (Checkpoint, error) {
	var cp Checkpoint
	b := tx.Bucket(BucketCheckpoint)
	if b == nil {
		return cp, nil
	}
	v := b.Get(CheckpointKey)
	if v == nil {
		return cp, nil
	}
	if len(v) != 40 || binary.BigEndian.Uint64(v[:8]) == 0 {
		return cp, &CorruptError{Seq: 1, Problem: fmt.Sprintf("prune checkpoint malformed (%d bytes)", len(v))}
	}
	cp.Seq = binary.BigEndian.Uint64(v[:8])
	copy(cp.Hash[:], v[8:])
	return cp, nil
}

// PruneTx deletes records cp+1..through (cp is the current checkpoint) inside tx, which must be
// writable, and stores (through, hash of record through) as the new checkpoint. want must be
// that hash (what the caller archived): if record through has another hash, or a record in the
// range is missing or unreadable, nothing is deleted and the error says why. The head record is
// never pruned (through < head seq), so the chain is never empty. It returns the new
// checkpoint and how many records were deleted.
func PruneTx(tx *bucketstore.Tx, through uint64, want [32]byte) (Checkpoint, int, error) {
	cp, err := CheckpointTx(tx)
	if err != nil {
		return cp, 0, err
	}
	if through <= cp.Seq {
		return cp, 0, fmt.Errorf("audit: prune through %d: already pruned through %d", through, cp.Seq)
	}
	head, _, err := Head(tx)
	if err != nil {
		return cp, 0, err
	}
	if through >= head {
		return cp, 0, fmt.Errorf("audit: prune through %d: the head record (seq %d) is never pruned", through, head)
	}
	last, ok, err := Get(tx, through)
	if err != nil {
		return cp, 0, err
	}
	if !ok || last.Hash != want {
		return cp, 0, &CorruptError{Seq: through, Problem: "record to prune through is missing or does not have the archived hash"}
	}
	next, ok, err := Get(tx, through+1)
	if err != nil {
		return cp, 0, err
	}
	if !ok || !bytes.Equal(next.Prev, want[:]) {
		return cp, 0, &CorruptError{Seq: through + 1, Problem: "record after the new checkpoint does not link to it"}
	}
	rb := tx.Bucket(BucketRecords)
	n := 0
	for s := cp.Seq + 1; s <= through; s++ {
		if rb.Get(seqKey(s)) == nil {
			return cp, 0, &CorruptError{Seq: s, Problem: fmt.Sprintf("record %d missing before pruning", s)}
		}
		if err := rb.Delete(seqKey(s)); err != nil {
			return cp, 0, fmt.Errorf("audit: prune: %w", err)
		}
		n++
	}
	b, err := tx.CreateBucketIfNotExists(BucketCheckpoint)
	if err != nil {
		return cp, 0, fmt.Errorf("audit: create bucket: %w", err)
	}
	v := make([]byte, 40)
	binary.BigEndian.PutUint64(v, through)
	copy(v[8:], want[:])
	if err := b.Put(CheckpointKey, v); err != nil {
		return cp, 0, fmt.Errorf("audit: put checkpoint: %w", err)
	}
	return Checkpoint{Seq: through, Hash: want}, n, nil
}

// ParseJSONRecord rebuilds a record from its export line (Record.JSON, as Export writes it),
// recomputes its hash from the deterministic encoding and checks it against the line's "hash".
// A line that does not parse, or whose hash does not match its content, is a *CorruptError.
func ParseJSONRecord(line []byte) (Record, error) {
	var j jsonLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return Record{}, &CorruptError{Seq: j.Seq, Problem: "export line does not parse: " + err.Error()}
	}
	bad := func(what string) (Record, error) {
		return Record{}, &CorruptError{Seq: j.Seq, Problem: "export line: bad " + what}
	}
	t, err := time.Parse(time.RFC3339Nano, j.Time)
	if err != nil {
		return bad("time")
	}
	unhex := func(s string) ([]byte, bool) {
		if s == "" {
			return nil, true
		}
		if len(s) < 2 || s[:2] != "0x" {
			return nil, false
		}
		b, err := hex.DecodeString(s[2:])
		return b, err == nil && len(b) > 0
	}
	r := Record{Seq: j.Seq, Time: t.UnixNano()}
	e := &r.Event
	*e = Event{Kind: j.Kind, Decision: j.Decision, Code: j.Code, Rule: j.Rule, Reason: j.Reason,
		Principal: j.Principal, Agent: j.Agent, Wallet: j.Wallet, TabID: j.TabID, ReqID: j.ReqID,
		RecordID: j.RecordID, Operator: j.Operator, ApprovalID: j.ApprovalID, Scheme: j.Scheme,
		Charges: j.Charges, Attrs: j.Attrs}
	var ok bool
	for _, f := range []struct {
		s    string
		dst  *[]byte
		name string
	}{{j.Prev, &r.Prev, "prev"}, {j.PolicyHash, &e.PolicyHash, "policy_hash"}, {j.Digest, &e.Digest, "digest"},
		{j.Signature, &e.Signature, "signature"}, {j.ClaimsHash, &e.ClaimsHash, "claims_hash"}} {
		if *f.dst, ok = unhex(f.s); !ok {
			return bad(f.name)
		}
	}
	claimed, ok := unhex(j.Hash)
	if !ok || len(claimed) != 32 {
		return bad("hash")
	}
	b, err := Encode(&r)
	if err != nil {
		return bad("content: " + err.Error())
	}
	r.Hash = sha256.Sum256(b)
	if !bytes.Equal(r.Hash[:], claimed) {
		return Record{}, &CorruptError{Seq: j.Seq, Problem: "export line's content does not hash to its hash (altered)"}
	}
	return r, nil
}

// ChainCheck verifies records presented in order (an archive, an export): the first must
// follow From (seq From.Seq+1, prev From.Hash) and each next one the previous. Feed records with
// Add; Last is the last good one.
type ChainCheck struct {
	From Checkpoint // where the records start: zero for the genesis
	Last Checkpoint // the last record added (From until one is)
	N    uint64     // records added
}

// NewChainCheck starts a check after from.
func NewChainCheck(from Checkpoint) *ChainCheck { return &ChainCheck{From: from, Last: from} }

// Add checks that r follows the last record (sequence and prev hash, known kind). Errors are
// *CorruptError.
func (c *ChainCheck) Add(r Record) error {
	if r.Seq != c.Last.Seq+1 {
		return &CorruptError{Seq: c.Last.Seq + 1, Problem: fmt.Sprintf("record %d missing (next record is %d)", c.Last.Seq+1, r.Seq)}
	}
	if !bytes.Equal(r.Prev, c.Last.Hash[:]) {
		return &CorruptError{Seq: r.Seq, Problem: fmt.Sprintf("record %d's prev hash does not match record %d", r.Seq, c.Last.Seq)}
	}
	if !r.Event.Kind.Valid() {
		return &CorruptError{Seq: r.Seq, Problem: fmt.Sprintf("unknown kind %q", r.Event.Kind)}
	}
	c.Last = Checkpoint{Seq: r.Seq, Hash: r.Hash}
	c.N++
	return nil
}

// AnchorPruned: the anchored record was pruned (archived) and cannot be checked against the
// live log; check it against the archive (signerctl audit verify --archive FILE). Not a
// failure by itself.
const AnchorPruned AnchorStatus = "pruned"

// CheckAnchorsAfter is CheckAnchors on a log pruned through cp: an anchor at cp.Seq is checked
// against the checkpoint hash, an anchor before it is AnchorPruned, later ones as CheckAnchors.
func CheckAnchorsAfter(anchors []Anchor, head uint64, cp Checkpoint, get RecordLookup) ([]AnchorResult, error) {
	if cp.Seq == 0 {
		return CheckAnchors(anchors, head, get)
	}
	return CheckAnchors(anchors, head, func(seq uint64) (Record, bool, error) {
		switch {
		case seq == cp.Seq:
			return Record{Seq: seq, Hash: cp.Hash}, true, nil
		case seq < cp.Seq:
			return Record{}, false, errPruned
		}
		return get(seq)
	})
}

var errPruned = errors.New("audit: record pruned")

// VerifyRecentTx verifies the last n records of the chain (fewer after a prune checkpoint): each
// decodes, links to the one before it, the last one is the head, and nothing follows the head.
// It is the daemon's start-up check; Verify walks the whole chain.
func VerifyRecentTx(tx *bucketstore.Tx, n uint64) (Report, error) {
	rep := Report{}
	cp, err := CheckpointTx(tx)
	if err != nil {
		return rep, err
	}
	head, hh, err := Head(tx)
	if err != nil {
		return rep, err
	}
	if head < cp.Seq {
		return rep, &CorruptError{Seq: head, Problem: fmt.Sprintf("head says seq %d, before the prune checkpoint (seq %d)", head, cp.Seq)}
	}
	start := cp.Seq + 1
	if n > 0 && head > n && head-n+1 > start {
		start = head - n + 1
	}
	prev := cp.Hash
	if start > cp.Seq+1 {
		r, ok, err := Get(tx, start-1)
		if err != nil {
			return rep, err
		}
		if !ok {
			return rep, &CorruptError{Seq: start - 1, Problem: "record missing"}
		}
		prev = r.Hash
	}
	for seq := start; seq <= head; seq++ {
		r, ok, err := Get(tx, seq)
		if err != nil {
			return rep, err
		}
		if !ok {
			return rep, &CorruptError{Seq: seq, Problem: "record missing before the head"}
		}
		if !bytes.Equal(r.Prev, prev[:]) {
			return rep, &CorruptError{Seq: seq, Problem: fmt.Sprintf("record %d does not link to record %d", seq, seq-1)}
		}
		prev = r.Hash
		rep.Records++
	}
	if head > cp.Seq && prev != hh {
		return rep, &CorruptError{Seq: head, Problem: "last record does not match the head hash"}
	}
	if _, ok, _ := Get(tx, head+1); ok {
		return rep, &CorruptError{Seq: head + 1, Problem: fmt.Sprintf("record %d is beyond the head (seq %d): appended outside the log", head+1, head)}
	}
	rep.OK, rep.HeadSeq, rep.HeadHash = true, head, "0x"+hex.EncodeToString(prev[:])
	return rep, nil
}
