package ledger

// Retention: archive, then prune. Payment records and audit records are history; they are
// deleted only after they were archived somewhere the operator chose, in two steps:
//
//  1. ExportArchive(w, before) selects what a prune at `before` would delete, in one read
//     transaction, and writes it to w as an archive (JSON lines: a header, the audit records
//     as audit.Export writes them, the payment records, and a trailer with the plan digest and
//     the SHA-256 of everything before the trailer). Nothing is changed.
//  2. Prune(ctx, before, plan, ...) — called only once the archive is safely written — selects
//     again inside the committer's transaction and deletes only if the selection's digest is
//     the plan the archive was made from (ErrPlanChanged otherwise, nothing deleted). It
//     deletes the audit records through the checkpoint (audit.PruneTx stores the checkpoint),
//     the payment records and their signature entries, and appends one retention audit record,
//     all in one transaction.
//
// A crash or a failed archive write anywhere before step 2 commits deletes nothing; step 2
// deletes nothing that is not in an archive made from the same selection.
//
// What is selected at `before` (which must be at least MinPruneAge behind the ledger clock):
//   - audit records from the checkpoint on, while their time is before `before`, never the
//     head record (the chain is never empty);
//   - payment records whose status is final (signed or released) and whose last update is
//     before `before`, except records named by a collateral pending-broadcast mark. Reserved
//     records are never selected.
//
// Replay entries are kept (85 bytes each): the entry of a pruned signed record is marked
// pruned ('p'), so a retry of that (wallet, tab_id, req_id) is refused as a replay conflict —
// never signed again, never charged again; the entry of a pruned released record (a key that
// was already free) is deleted. Budget usage is not touched.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/signerd/audit"
)

// MinPruneAge is how far behind the ledger clock a prune's `before` must be at least: far
// beyond any policy's timestamp skew, any retry window of an agent and any budget window's
// bucket in which a record's charges could still be refunded.
const MinPruneAge = 24 * time.Hour

// ArchiveVersion is the archive format version ExportArchive writes: 2 (the plan binds each
// payment record's content). VerifyArchive still reads version 1 archives (plan over ids only).
const ArchiveVersion = 2

// replayPruned is the replay status byte of a key whose signed record was pruned.
const replayPruned byte = 'p'

// UnbroadcastPrefix is the state-key prefix of pending-broadcast marks: package pipeline writes
// one (UnbroadcastPrefix + wallet + "/" + record id) before it signs a transaction and removes
// it once the RPC took it. Records such a mark names are never pruned.
const UnbroadcastPrefix = "collateral/unbroadcast/"

// ErrPlanChanged means what a prune would delete is no longer what the archive holds (the
// selection changed between export and prune): nothing was deleted; export again.
var ErrPlanChanged = errors.New("ledger: prune plan changed since the archive was exported")

// ArchiveSummary describes an archive (or what a prune deleted).
type ArchiveSummary struct {
	Before         time.Time
	From           audit.Checkpoint // checkpoint the archive's audit records follow (zero: genesis)
	Through        audit.Checkpoint // last archived audit record (= From when none)
	AuditRecords   int
	PaymentRecords int
	Plan           [32]byte // digest of the selection (what Prune must find again)
	SHA256         [32]byte // SHA-256 of the archive bytes before the trailer line
	// Hashes holds every archived audit record's (seq, hash), in order (VerifyArchive only).
	Hashes []audit.Anchor
	// Retention holds the archived retention audit records (VerifyArchive only): the records
	// of earlier prunes, which name their archives' plan and SHA-256.
	Retention []audit.Record
}

// prunePlan is a selection.
type prunePlan struct {
	before  time.Time
	from    audit.Checkpoint
	through audit.Checkpoint
	ids     []RecordID
	sums    [][32]byte // SHA-256 of each selected record's archive form (its JSON), as ids
	version int        // archive version the digest is for (0: ArchiveVersion)
}

// recordSum is the SHA-256 of a payment record's archive form: the plan binds what is deleted
// to the bytes archived, not only to the ids.
func recordSum(recJSON []byte) [32]byte { return sha256.Sum256(recJSON) }

// digest is the plan: SHA-256 over before, the checkpoint the archive starts from and the one
// it ends at (seq and hash: through's hash binds every archived audit record by the chain),
// and every selected payment record's id and content hash, in id order. Recomputed by
// VerifyArchive from the archive's own lines, and by Prune from the ledger inside the deleting
// transaction: equal digests mean the ledger deletes exactly what the archive holds.
func (p *prunePlan) digest() [32]byte {
	h := sha256.New()
	v1 := p.version == 1 // ids only: archives written before the content was bound
	if v1 {
		h.Write([]byte("signerd-prune-v1\x00"))
	} else {
		h.Write([]byte("signerd-prune-v2\x00"))
	}
	var b [8]byte
	for _, v := range []uint64{uint64(p.before.UnixNano()), p.from.Seq, p.through.Seq, uint64(len(p.ids))} {
		binary.BigEndian.PutUint64(b[:], v)
		h.Write(b[:])
	}
	h.Write(p.from.Hash[:])
	h.Write(p.through.Hash[:])
	for i, id := range p.ids {
		h.Write(id.key())
		if !v1 {
			h.Write(p.sums[i][:])
		}
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// minBefore is the earliest before accepted: audit record times are compared in int64
// nanoseconds, which wrap before 1678 (year 1000's UnixNano is in 2169); nothing is older.
var minBefore = time.Unix(0, 0)

func checkBefore(before, now time.Time) error {
	if before.Before(minBefore) {
		return fmt.Errorf("%w: prune before %s: before 1970 (nothing is that old)", ErrInvalid, before.UTC().Format(time.RFC3339))
	}
	if before.After(now.Add(-MinPruneAge)) {
		return fmt.Errorf("%w: prune before %s: must be at least %s before the appliance time %s", ErrInvalid,
			before.UTC().Format(time.RFC3339), MinPruneAge, now.UTC().Format(time.RFC3339))
	}
	return nil
}

// selectPrune computes what a prune at before deletes (see the file comment).
func selectPrune(tx *bucketstore.Tx, before time.Time) (*prunePlan, error) {
	p := &prunePlan{before: before}
	cp, err := audit.CheckpointTx(tx)
	if err != nil {
		return nil, err
	}
	p.from, p.through = cp, cp
	head, _, err := audit.Head(tx)
	if err != nil {
		return nil, err
	}
	c := tx.Bucket(audit.BucketRecords).Cursor()
	for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, cp.Seq+1)); k != nil; k, v = c.Next() {
		seq := binary.BigEndian.Uint64(k)
		if seq >= head {
			break
		}
		r, err := audit.Decode(seq, v)
		if err != nil {
			return nil, err
		}
		if r.Seq != p.through.Seq+1 || !bytes.Equal(r.Prev, p.through.Hash[:]) {
			return nil, &audit.CorruptError{Seq: p.through.Seq + 1, Problem: "audit chain broken: run audit verify"}
		}
		if r.Time >= before.UnixNano() {
			break
		}
		p.through = audit.Checkpoint{Seq: r.Seq, Hash: r.Hash}
	}
	marked := map[RecordID]bool{}
	sc := tx.Bucket(bucketState).Cursor()
	for k, _ := sc.Seek([]byte(UnbroadcastPrefix)); k != nil && bytes.HasPrefix(k, []byte(UnbroadcastPrefix)); k, _ = sc.Next() {
		s := string(k)
		id, err := strconv.ParseUint(s[strings.LastIndexByte(s, '/')+1:], 10, 64)
		if err != nil || id == 0 {
			// Fail closed: a mark naming no record id could protect any record.
			return nil, corruptf("pending-broadcast mark %q names no record id: nothing is pruned while it is there", s)
		}
		marked[RecordID(id)] = true
	}
	rc := tx.Bucket(bucketRecords).Cursor()
	for k, v := rc.First(); k != nil; k, v = rc.Next() {
		if len(k) != 8 {
			return nil, corruptf("record key %x", k)
		}
		id := RecordID(binary.BigEndian.Uint64(k))
		rec, err := loadRecord(tx, id, v)
		if err != nil {
			return nil, err
		}
		if rec.Status == StatusReserved || !rec.Updated.Before(before) || marked[id] || isPending(tx, id) {
			continue
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return nil, err
		}
		p.ids = append(p.ids, id)
		p.sums = append(p.sums, recordSum(b))
	}
	return p, nil
}

type archiveHeader struct {
	Type           string `json:"type"` // signerd_archive
	Version        int    `json:"version"`
	Before         string `json:"before"`
	Created        string `json:"created"`
	FromSeq        uint64 `json:"from_seq"`
	FromHash       string `json:"from_hash"`
	ThroughSeq     uint64 `json:"through_seq"`
	ThroughHash    string `json:"through_hash"`
	AuditRecords   int    `json:"audit_records"`
	PaymentRecords int    `json:"payment_records"`
}

type archiveTrailer struct {
	Type           string `json:"type"` // end
	Plan           string `json:"plan"`
	SHA256         string `json:"sha256"`
	AuditRecords   int    `json:"audit_records"`
	PaymentRecords int    `json:"payment_records"`
}

type archiveRecord struct {
	Type   string          `json:"type"` // payment_record
	Record json.RawMessage `json:"record"`
}

func hash32(b [32]byte) string { return "0x" + hex.EncodeToString(b[:]) }

// exportChunk is how many records ExportArchive reads per read transaction.
const exportChunk = 256

// ExportArchive writes the archive of what a prune at before would delete to w (see the file
// comment for the format) and returns its summary; Summary.Plan and Summary.SHA256 are what
// Prune takes. It changes nothing. before must be at least MinPruneAge behind the clock
// (ErrInvalid). A write error is returned as it is (nothing was pruned, nothing will be).
//
// No transaction is open while w is written (w is the operator's connection, which may stall,
// and a long-held read snapshot pins the store's old files and memtables): the selection is made in one read transaction, then the records are read in
// short ones, exportChunk at a time, each checked against the selection (audit records by the
// chain up to the selection's through hash, payment records by their content hash). A record
// pruned or changed meanwhile fails the export (ErrPlanChanged); nothing is pruned.
func (l *Ledger) ExportArchive(w io.Writer, before time.Time) (ArchiveSummary, error) {
	now := l.clock()
	if err := checkBefore(before, now); err != nil {
		return ArchiveSummary{}, err
	}
	var p *prunePlan
	if err := l.view("export_archive", func(tx *bucketstore.Tx) (err error) {
		p, err = selectPrune(tx, before)
		return err
	}); err != nil {
		return ArchiveSummary{}, err
	}
	sum := ArchiveSummary{Before: before, From: p.from, Through: p.through,
		AuditRecords: int(p.through.Seq - p.from.Seq), PaymentRecords: len(p.ids), Plan: p.digest()}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 64<<10)
	line := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_, err = bw.Write(append(b, '\n'))
		return err
	}
	if err := line(archiveHeader{Type: "signerd_archive", Version: ArchiveVersion,
		Before: before.UTC().Format(time.RFC3339Nano), Created: now.UTC().Format(time.RFC3339Nano),
		FromSeq: p.from.Seq, FromHash: hash32(p.from.Hash), ThroughSeq: p.through.Seq,
		ThroughHash: hash32(p.through.Hash), AuditRecords: sum.AuditRecords, PaymentRecords: sum.PaymentRecords}); err != nil {
		return sum, err
	}
	var chunk bytes.Buffer
	last := p.from
	for seq := p.from.Seq + 1; seq <= p.through.Seq; {
		chunk.Reset()
		end := min(seq+exportChunk-1, p.through.Seq)
		if err := l.view("export_archive", func(tx *bucketstore.Tx) error {
			for s := seq; s <= end; s++ {
				r, ok, err := audit.Get(tx, s)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("%w: audit record %d was pruned during the export", ErrPlanChanged, s)
				}
				if !bytes.Equal(r.Prev, last.Hash[:]) {
					return &audit.CorruptError{Seq: s, Problem: "audit chain broken: run audit verify"}
				}
				last = audit.Checkpoint{Seq: s, Hash: r.Hash}
				b, err := r.JSON()
				if err != nil {
					return err
				}
				chunk.Write(b)
				chunk.WriteByte('\n')
			}
			return nil
		}); err != nil {
			return sum, err
		}
		if _, err := bw.Write(chunk.Bytes()); err != nil {
			return sum, err
		}
		seq = end + 1
	}
	if last != p.through {
		return sum, &audit.CorruptError{Seq: p.through.Seq, Problem: "audit records do not end at the selected hash"}
	}
	for i := 0; i < len(p.ids); {
		chunk.Reset()
		end := min(i+exportChunk, len(p.ids))
		if err := l.view("export_archive", func(tx *bucketstore.Tx) error {
			for j := i; j < end; j++ {
				rec, err := getRecord(tx, p.ids[j])
				if errors.Is(err, ErrNotFound) {
					return fmt.Errorf("%w: record %d was pruned during the export", ErrPlanChanged, p.ids[j])
				}
				if err != nil {
					return err
				}
				b, err := json.Marshal(rec)
				if err != nil {
					return err
				}
				if recordSum(b) != p.sums[j] {
					return fmt.Errorf("%w: record %d changed during the export", ErrPlanChanged, p.ids[j])
				}
				b, err = json.Marshal(archiveRecord{Type: "payment_record", Record: b})
				if err != nil {
					return err
				}
				chunk.Write(b)
				chunk.WriteByte('\n')
			}
			return nil
		}); err != nil {
			return sum, err
		}
		if _, err := bw.Write(chunk.Bytes()); err != nil {
			return sum, err
		}
		i = end
	}
	if err := bw.Flush(); err != nil {
		return sum, err
	}
	h.Sum(sum.SHA256[:0])
	if err := line(archiveTrailer{Type: "end", Plan: hash32(sum.Plan), SHA256: hash32(sum.SHA256),
		AuditRecords: sum.AuditRecords, PaymentRecords: sum.PaymentRecords}); err != nil {
		return sum, err
	}
	return sum, bw.Flush()
}

// MaxArchiveLine bounds one line of an archive (a payment record with its claims).
const MaxArchiveLine = 1 << 20

// VerifyArchive reads an archive written by ExportArchive and checks it completely: the
// header, every audit record's hash recomputed from its content and its time before the
// header's before, the chain from the header's checkpoint to its through hash, every payment
// record (final, last updated before before, ids ascending), the counts, the plan recomputed
// from the archive's own lines (header, through hash, ids and content hashes) against the
// trailer's, and the trailer (present, last, SHA-256 of everything before it). Summary.Plan is
// the recomputed plan: a prune confirmed with it deletes exactly what the archive holds.
//
// What an archive alone proves is only that it is complete and consistent: anyone can write
// lines that chain and recompute the hashes. Its audit part is tied to the ledger by its
// through hash being the live checkpoint (signerctl audit verify --archive), and its payment
// records by its plan and SHA-256 being those of the retention audit record of the prune.
//
// Errors: a *audit.CorruptError for a bad audit record, ErrCorrupt-matching errors for a
// malformed, inconsistent or truncated archive, or the reader's error.
func VerifyArchive(r io.Reader) (ArchiveSummary, error) {
	var sum ArchiveSummary
	bad := func(n int, format string, a ...any) error {
		return &CorruptError{Problem: fmt.Sprintf("archive line %d: ", n) + fmt.Sprintf(format, a...)}
	}
	br := bufio.NewReaderSize(r, 64<<10)
	h := sha256.New()
	var (
		hdr   archiveHeader
		chain *audit.ChainCheck
		done  bool
		plan  prunePlan
	)
	for n := 1; ; n++ {
		line, err := readLine(br)
		if err == io.EOF {
			if !done {
				return sum, bad(n, "no trailer: the archive is truncated")
			}
			return sum, nil
		}
		if err != nil {
			return sum, err
		}
		if done {
			return sum, bad(n, "data after the trailer")
		}
		var typ struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(line, &typ); err != nil {
			return sum, bad(n, "not JSON")
		}
		switch {
		case n == 1:
			if typ.Type != "signerd_archive" || json.Unmarshal(line, &hdr) != nil || hdr.Version < 1 || hdr.Version > ArchiveVersion {
				return sum, bad(n, "not a signerd archive header (versions 1..%d)", ArchiveVersion)
			}
			var err error
			if sum.Before, err = time.Parse(time.RFC3339Nano, hdr.Before); err != nil || sum.Before.Before(minBefore) {
				return sum, bad(n, "header before")
			}
			if sum.From, err = parseArchiveCheckpoint(hdr.FromSeq, hdr.FromHash); err != nil {
				return sum, bad(n, "header from: %v", err)
			}
			if sum.Through, err = parseArchiveCheckpoint(hdr.ThroughSeq, hdr.ThroughHash); err != nil {
				return sum, bad(n, "header through: %v", err)
			}
			chain = audit.NewChainCheck(sum.From)
			plan = prunePlan{before: sum.Before, from: sum.From, through: sum.Through, version: hdr.Version}
		case typ.Type == "":
			rec, err := audit.ParseJSONRecord(line)
			if err != nil {
				return sum, err
			}
			if err := chain.Add(rec); err != nil {
				return sum, err
			}
			if rec.Time >= sum.Before.UnixNano() {
				return sum, bad(n, "audit record %d is not older than the archive's before", rec.Seq)
			}
			if rec.Event.Kind == audit.KindRetention {
				sum.Retention = append(sum.Retention, rec)
			}
			sum.AuditRecords++
			sum.Hashes = append(sum.Hashes, audit.Anchor{Seq: rec.Seq, Hash: rec.Hash})
		case typ.Type == "payment_record":
			var pr archiveRecord
			var rec struct {
				ID      RecordID `json:"record_id"`
				Status  Status   `json:"status"`
				Updated string   `json:"updated"`
			}
			if json.Unmarshal(line, &pr) != nil || json.Unmarshal(pr.Record, &rec) != nil || rec.ID == 0 {
				return sum, bad(n, "payment record malformed")
			}
			if len(plan.ids) > 0 && rec.ID <= plan.ids[len(plan.ids)-1] {
				return sum, bad(n, "payment record %d out of order or repeated", rec.ID)
			}
			up, err := time.Parse(time.RFC3339Nano, rec.Updated)
			if err != nil || !up.Before(sum.Before) || (rec.Status != StatusSigned && rec.Status != StatusReleased) {
				return sum, bad(n, "payment record %d is not final and older than the archive's before", rec.ID)
			}
			plan.ids = append(plan.ids, rec.ID)
			plan.sums = append(plan.sums, recordSum(pr.Record))
			sum.PaymentRecords++
		case typ.Type == "end":
			var tr archiveTrailer
			if json.Unmarshal(line, &tr) != nil {
				return sum, bad(n, "trailer malformed")
			}
			h.Sum(sum.SHA256[:0])
			if tr.SHA256 != hash32(sum.SHA256) {
				return sum, bad(n, "the archive's SHA-256 is not the trailer's (altered or incomplete)")
			}
			if tr.AuditRecords != sum.AuditRecords || tr.PaymentRecords != sum.PaymentRecords ||
				hdr.AuditRecords != sum.AuditRecords || hdr.PaymentRecords != sum.PaymentRecords {
				return sum, bad(n, "record counts do not match the header and trailer")
			}
			if chain.Last != sum.Through {
				return sum, bad(n, "the audit records end at seq %d, the header says %d", chain.Last.Seq, sum.Through.Seq)
			}
			sum.Plan = plan.digest()
			if tr.Plan != hash32(sum.Plan) {
				return sum, bad(n, "the trailer's plan is not the plan of the archive's content (altered, or not what the daemon selected)")
			}
			done = true
			continue
		default:
			return sum, bad(n, "unknown line type %q", typ.Type)
		}
		h.Write(line)
		h.Write([]byte{'\n'})
	}
}

// parseArchiveCheckpoint reads a header checkpoint: seq 0 must come with the zero hash.
func parseArchiveCheckpoint(seq uint64, h string) (audit.Checkpoint, error) {
	cp := audit.Checkpoint{Seq: seq}
	b, err := hex.DecodeString(strings.TrimPrefix(h, "0x"))
	if err != nil || len(b) != 32 || !strings.HasPrefix(h, "0x") {
		return cp, fmt.Errorf("hash %q: want 0x and 32 bytes of hex", h)
	}
	copy(cp.Hash[:], b)
	if seq == 0 && cp.Hash != ([32]byte{}) {
		return cp, errors.New("seq 0 (genesis) with a non-zero hash")
	}
	return cp, nil
}

// readLine reads one '\n'-terminated line (without it), bounded by MaxArchiveLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		frag, err := br.ReadSlice('\n')
		out = append(out, frag...)
		if len(out) > MaxArchiveLine {
			return nil, &CorruptError{Problem: "archive line too long"}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			if len(out) == 0 {
				return nil, io.EOF
			}
			return nil, &CorruptError{Problem: "archive ends in the middle of a line (truncated)"}
		}
		if err != nil {
			return nil, err
		}
		return out[:len(out)-1], nil
	}
}

// PruneRequest is a confirmed prune: what ExportArchive returned, once the archive is safe.
type PruneRequest struct {
	Before        time.Time
	Plan          [32]byte // ArchiveSummary.Plan of the archive written
	ArchiveSHA256 [32]byte // ArchiveSummary.SHA256 (recorded in the audit record)
	Operator      string
}

type pruneOp struct {
	opBase
	req PruneRequest
	sum ArchiveSummary
	rec audit.Record
}

func (o *pruneOp) earlyOK() bool      { return false }
func (o *pruneOp) wroteNothing() bool { return false }
func (o *pruneOp) lazy() bool         { return false }

// Prune deletes what ExportArchive selected for req.Before, provided the selection is still
// the one the archive was made from (req.Plan; else ErrPlanChanged and nothing is deleted), in
// one transaction with a retention audit record (operator, before, checkpoint, counts, plan,
// archive SHA-256). Pruning again with the same plan after it succeeded finds another
// selection (ErrPlanChanged, nothing deleted): export again. See the file comment.
func (l *Ledger) Prune(ctx context.Context, req PruneRequest) (ArchiveSummary, error) {
	o := &pruneOp{opBase: newBase(false), req: req}
	if err := l.submit(ctx, o); err != nil {
		return ArchiveSummary{}, err
	}
	return o.sum, nil
}

func (o *pruneOp) apply(tx *bucketstore.Tx, now time.Time) error {
	o.sum = ArchiveSummary{}
	if err := checkBefore(o.req.Before, now); err != nil {
		o.err = err
		return nil
	}
	p, err := selectPrune(tx, o.req.Before)
	if err != nil {
		o.err = err
		return nil
	}
	if p.digest() != o.req.Plan {
		o.err = ErrPlanChanged
		return nil
	}
	if len(p.ids) == 0 && p.through == p.from {
		o.err = fmt.Errorf("%w: nothing to prune", ErrInvalid)
		return nil
	}
	o.sum = ArchiveSummary{Before: o.req.Before, From: p.from, Through: p.through,
		AuditRecords: int(p.through.Seq - p.from.Seq), PaymentRecords: len(p.ids), Plan: p.digest(), SHA256: o.req.ArchiveSHA256}
	// The state the chain implies now, before its beginning is deleted (nil: a ledger pruned
	// before state binding, which stays unbound).
	base, err := pruneBase(tx)
	if err != nil {
		o.err = err
		return nil
	}
	// Writes from here on: any error rolls the group back (returned, not set in o.err).
	if p.through.Seq > p.from.Seq {
		if _, _, err := audit.PruneTx(tx, p.through.Seq, p.through.Hash); err != nil {
			return err
		}
	}
	rb, sb, pb := tx.Bucket(bucketRecords), tx.Bucket(bucketSigs), tx.Bucket(bucketReplay)
	for _, id := range p.ids {
		rec, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		rk := replayKey(rec.Wallet, rec.TabID, rec.ReqID)
		if v := pb.Get(rk); v != nil {
			e, err := parseReplay(rk, v)
			if err != nil {
				return err
			}
			if e.id == id {
				if rec.Status == StatusSigned {
					e.status = replayPruned
					err = pb.Put(rk, e.bytes())
				} else {
					err = pb.Delete(rk)
				}
				if err != nil {
					return err
				}
			}
		}
		if err := rb.Delete(id.key()); err != nil {
			return err
		}
		if err := sb.Delete(id.key()); err != nil {
			return err
		}
		base.forget(uint64(id))
	}
	attrs, err := storeBase(tx, base)
	if err != nil {
		return err
	}
	for k, v := range retentionAttrs(o.req, o.sum) {
		attrs[k] = v
	}
	o.rec, err = audit.Append(tx, now, audit.Event{Kind: audit.KindRetention, Operator: o.req.Operator,
		Reason: "archived and pruned", Attrs: attrs})
	return err
}

// AuditCheckpoint returns the audit log's prune checkpoint (zero when nothing was pruned).
func (l *Ledger) AuditCheckpoint() (cp audit.Checkpoint, err error) {
	err = l.view("audit_checkpoint", func(tx *bucketstore.Tx) error {
		cp, err = audit.CheckpointTx(tx)
		return err
	})
	return cp, err
}

// RecordedBy reports whether r is the retention audit record of the prune this archive was
// confirmed for: same checkpoint (seq and hash), plan and archive SHA-256. An archive's payment
// records are tied to the ledger only this way (its audit records also by the checkpoint).
func (s ArchiveSummary) RecordedBy(r audit.Record) bool {
	a := r.Event.Attrs
	return r.Event.Kind == audit.KindRetention &&
		a["pruned_through"] == strconv.FormatUint(s.Through.Seq, 10) &&
		a["checkpoint_hash"] == hash32(s.Through.Hash) &&
		a["plan"] == hash32(s.Plan) && a["archive_sha256"] == hash32(s.SHA256)
}

// retentionAttrs are the facts of a prune its retention audit record carries.
func retentionAttrs(req PruneRequest, sum ArchiveSummary) map[string]string {
	return map[string]string{
		"before":          req.Before.UTC().Format(time.RFC3339Nano),
		"pruned_through":  strconv.FormatUint(sum.Through.Seq, 10),
		"checkpoint_hash": hash32(sum.Through.Hash),
		"audit_records":   strconv.Itoa(sum.AuditRecords),
		"payment_records": strconv.Itoa(sum.PaymentRecords),
		"plan":            hash32(sum.Plan),
		"archive_sha256":  hash32(req.ArchiveSHA256),
	}
}
