package audit

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"
)

// Anchoring. The chain alone cannot detect a full rewrite by someone with write access to the
// file (every later record and the head re-hashed) nor a truncation of the tail (records and
// head rolled back together). An anchor is a (seq, hash) pair taken from the head (HeadInfo)
// and kept outside the appliance; CheckAnchors later proves that the record with that seq still
// exists and still has that hash. Because every record's hash covers the previous record's
// hash, a matching anchor on a chain that verifies also proves records 1..seq unchanged.

// Anchor is a sequence number and the hash its record had when the anchor was taken.
type Anchor struct {
	Seq  uint64
	Hash [32]byte
}

// String is the short form SEQ:0xHASH accepted by ParseAnchor.
func (a Anchor) String() string {
	return strconv.FormatUint(a.Seq, 10) + ":0x" + hex.EncodeToString(a.Hash[:])
}

// HeadInfo is the head of the log in the form operators anchor: the last sequence number, the
// hash of the last record and that record's appliance time. An empty log has Seq 0, a zero
// Hash and a zero Time.
type HeadInfo struct {
	Seq  uint64
	Hash [32]byte
	Time time.Time
}

// Anchor returns the anchor of h.
func (h HeadInfo) Anchor() Anchor { return Anchor{Seq: h.Seq, Hash: h.Hash} }

// Line is the one-line text form, "seq=N hash=0x… time=RFC3339Nano" (no time for an empty log),
// which ParseAnchor and ParseAnchors accept.
func (h HeadInfo) Line() string {
	s := "seq=" + strconv.FormatUint(h.Seq, 10) + " hash=0x" + hex.EncodeToString(h.Hash[:])
	if !h.Time.IsZero() {
		s += " time=" + h.Time.UTC().Format(time.RFC3339Nano)
	}
	return s
}

// headJSON is the JSON form of HeadInfo.
type headJSON struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	Time string `json:"time,omitempty"`
	Line string `json:"line"`
}

// MarshalJSON renders {"seq", "hash" (0x-hex), "time" (RFC 3339, omitted when empty), "line"}.
func (h HeadInfo) MarshalJSON() ([]byte, error) {
	j := headJSON{Seq: h.Seq, Hash: "0x" + hex.EncodeToString(h.Hash[:]), Line: h.Line()}
	if !h.Time.IsZero() {
		j.Time = h.Time.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the MarshalJSON form ("line" is ignored).
func (h *HeadInfo) UnmarshalJSON(b []byte) error {
	var j headJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	hash, err := parseHash(j.Hash)
	if err != nil {
		return fmt.Errorf("audit: head hash: %w", err)
	}
	var t time.Time
	if j.Time != "" {
		if t, err = time.Parse(time.RFC3339Nano, j.Time); err != nil {
			return fmt.Errorf("audit: head time: %w", err)
		}
	}
	*h = HeadInfo{Seq: j.Seq, Hash: hash, Time: t}
	return nil
}

// RecordLookup reads the record stored at seq (ok=false when there is none); an undecodable
// record is a *CorruptError. Get inside a transaction and ledger.Ledger.AuditRecord have this
// shape.
type RecordLookup func(seq uint64) (r Record, ok bool, err error)

// HeadFrom builds the HeadInfo for a head (seq, hash) read from BucketHead, taking the time
// from the last record. A last record that is missing, unreadable or does not match the head
// hash is a *CorruptError; other errors are I/O faults.
func HeadFrom(seq uint64, hash [32]byte, get RecordLookup) (HeadInfo, error) {
	if seq == 0 {
		if hash != ([32]byte{}) {
			return HeadInfo{}, &CorruptError{Seq: 0, Problem: "head of an empty log has a non-zero hash"}
		}
		return HeadInfo{}, nil
	}
	r, ok, err := get(seq)
	if err != nil {
		return HeadInfo{}, err
	}
	if !ok {
		return HeadInfo{}, &CorruptError{Seq: seq, Problem: fmt.Sprintf("head says seq %d but there is no such record", seq)}
	}
	if r.Hash != hash {
		return HeadInfo{}, &CorruptError{Seq: seq, Problem: "last record does not match the head hash (altered)"}
	}
	return HeadInfo{Seq: seq, Hash: hash, Time: time.Unix(0, r.Time).UTC()}, nil
}

// HeadInfoTx reads the head and the last record's time inside tx (see HeadFrom). It does not
// verify the chain: run Verify before anchoring a log that has not been verified.
func HeadInfoTx(tx *bucketstore.Tx) (HeadInfo, error) {
	seq, h, err := Head(tx)
	if err != nil {
		return HeadInfo{}, err
	}
	return HeadFrom(seq, h, func(s uint64) (Record, bool, error) { return Get(tx, s) })
}

// ReadHead is HeadInfoTx in a read transaction of db.
func ReadHead(db *bucketstore.DB) (h HeadInfo, err error) {
	err = db.View(func(tx *bucketstore.Tx) error {
		h, err = HeadInfoTx(tx)
		return err
	})
	return h, err
}

// ErrBadAnchor is the class of anchor syntax errors (match with errors.Is).
var ErrBadAnchor = errors.New("audit: malformed anchor")

// AnchorSyntaxError is an anchor text that does not parse.
type AnchorSyntaxError struct {
	Line    int    // line number in an anchors file (0 for a single anchor)
	Text    string // the offending text (shortened when long)
	Problem string
}

func (e *AnchorSyntaxError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("audit: malformed anchor on line %d %q: %s", e.Line, e.Text, e.Problem)
	}
	return fmt.Sprintf("audit: malformed anchor %q: %s", e.Text, e.Problem)
}

// Is makes AnchorSyntaxError match ErrBadAnchor.
func (e *AnchorSyntaxError) Is(target error) bool { return target == ErrBadAnchor }

func shorten(s string) string {
	if len(s) > 120 {
		return s[:117] + "..."
	}
	return s
}

// parseHash reads a 32-byte hash in hex, with or without 0x.
func parseHash(s string) ([32]byte, error) {
	var h [32]byte
	x := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	if len(x) != 64 {
		return h, fmt.Errorf("hash %q: want 32 bytes as 64 hex digits", shorten(s))
	}
	if _, err := hex.Decode(h[:], []byte(x)); err != nil {
		return h, fmt.Errorf("hash %q: not hex", shorten(s))
	}
	return h, nil
}

func parseSeq(s string) (uint64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("seq %q: want a decimal sequence number", shorten(s))
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("seq %q: out of range", shorten(s))
	}
	return v, nil
}

// ParseAnchor reads one anchor in any of the forms signerctl prints or takes:
//
//	1234:0x<64 hex>                          (the short form, Anchor.String)
//	seq=1234 hash=0x<64 hex> time=<RFC 3339>  (HeadInfo.Line; time is optional)
//	{"seq":1234,"hash":"0x<64 hex>",...}     (HeadInfo JSON; other keys ignored)
//
// The time is not compared (the hash covers it) but must be a valid RFC 3339 time. Errors are
// *AnchorSyntaxError.
func ParseAnchor(s string) (Anchor, error) {
	a, err := parseAnchor(strings.TrimSpace(s))
	if err != nil {
		return Anchor{}, &AnchorSyntaxError{Text: shorten(strings.TrimSpace(s)), Problem: err.Error()}
	}
	return a, nil
}

func parseAnchor(s string) (Anchor, error) {
	var a Anchor
	var err error
	switch {
	case s == "":
		return a, errors.New("empty")
	case strings.HasPrefix(s, "{"):
		var j struct {
			Seq  *uint64 `json:"seq"`
			Hash *string `json:"hash"`
		}
		if err := json.Unmarshal([]byte(s), &j); err != nil {
			return a, errors.New("not a JSON object with seq and hash")
		}
		if j.Seq == nil || j.Hash == nil {
			return a, errors.New("JSON anchor needs seq and hash")
		}
		a.Seq = *j.Seq
		if a.Hash, err = parseHash(*j.Hash); err != nil {
			return a, err
		}
	case strings.Contains(s, "="):
		seen := map[string]bool{}
		for _, f := range strings.Fields(s) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				return a, fmt.Errorf("%q is not key=value", shorten(f))
			}
			if seen[k] {
				return a, fmt.Errorf("%s given twice", k)
			}
			seen[k] = true
			switch k {
			case "seq":
				a.Seq, err = parseSeq(v)
			case "hash":
				a.Hash, err = parseHash(v)
			case "time":
				if _, terr := time.Parse(time.RFC3339Nano, v); terr != nil {
					err = fmt.Errorf("time %q: want RFC 3339", shorten(v))
				}
			default:
				err = fmt.Errorf("unknown key %q (want seq, hash, time)", shorten(k))
			}
			if err != nil {
				return a, err
			}
		}
		if !seen["seq"] || !seen["hash"] {
			return a, errors.New("want seq=N hash=0xHASH")
		}
	default:
		seq, hash, ok := strings.Cut(s, ":")
		if !ok {
			return a, errors.New("want SEQ:0xHASH or seq=N hash=0xHASH")
		}
		if a.Seq, err = parseSeq(seq); err != nil {
			return a, err
		}
		if a.Hash, err = parseHash(hash); err != nil {
			return a, err
		}
	}
	if a.Seq == 0 && a.Hash != ([32]byte{}) {
		return a, errors.New("seq 0 is the empty log, whose hash is zero")
	}
	return a, nil
}

// MaxAnchorLine bounds one line of an anchors file.
const MaxAnchorLine = 4096

// ParseAnchors reads an anchors file: one anchor per line in any ParseAnchor form; blank lines
// and everything from a '#' to the end of its line are ignored. The first bad line is an
// *AnchorSyntaxError naming its line number; read errors are returned as they are.
func ParseAnchors(r io.Reader) ([]Anchor, error) {
	var out []Anchor
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), MaxAnchorLine)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		a, err := ParseAnchor(line)
		if err != nil {
			se := err.(*AnchorSyntaxError)
			se.Line = n
			return nil, se
		}
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &AnchorSyntaxError{Line: n + 1, Text: "...", Problem: fmt.Sprintf("line longer than %d bytes", MaxAnchorLine)}
		}
		return nil, err
	}
	return out, nil
}

// AnchorStatus is the outcome of checking one anchor.
type AnchorStatus string

// The anchor outcomes.
const (
	// AnchorOK: the record exists and has the anchored hash.
	AnchorOK AnchorStatus = "ok"
	// AnchorMissing: there is no record with the anchored seq (the log was truncated or rolled back).
	AnchorMissing AnchorStatus = "missing"
	// AnchorMismatch: the record exists but its hash differs (the log was rewritten).
	AnchorMismatch AnchorStatus = "mismatch"
)

// AnchorResult is the outcome of checking one anchor.
type AnchorResult struct {
	Anchor  string       `json:"anchor"` // SEQ:0xHASH
	Seq     uint64       `json:"seq"`
	Status  AnchorStatus `json:"status"`
	Found   string       `json:"found,omitempty"`   // hash of the stored record, on a mismatch
	Problem string       `json:"problem,omitempty"` // human explanation, unless ok
}

// ErrAnchorFailed is the class of failed anchors (match with errors.Is). A failed anchor also
// matches ErrCorrupt: the log is no longer the one that was anchored.
var ErrAnchorFailed = errors.New("audit: anchor does not match the log")

// AnchorError says how many anchors failed and names the first.
type AnchorError struct {
	Failed int
	First  AnchorResult
}

func (e *AnchorError) Error() string {
	return fmt.Sprintf("audit: %d anchor(s) failed; anchor %s: %s", e.Failed, e.First.Anchor, e.First.Problem)
}

// Is makes AnchorError match ErrAnchorFailed and ErrCorrupt.
func (e *AnchorError) Is(target error) bool { return target == ErrAnchorFailed || target == ErrCorrupt }

// CheckAnchors checks each anchor against the log: the record with the anchor's seq must exist
// (seq 0, the empty log, always does) and its hash must equal the anchor's. head is the log's
// last seq, used in the messages. Results come in the anchors' order; a failed anchor is a
// result, not an error: the error is an I/O fault of get.
func CheckAnchors(anchors []Anchor, head uint64, get RecordLookup) ([]AnchorResult, error) {
	out := make([]AnchorResult, 0, len(anchors))
	for _, a := range anchors {
		res := AnchorResult{Anchor: a.String(), Seq: a.Seq, Status: AnchorOK}
		if a.Seq == 0 {
			// ParseAnchor accepts seq 0 only with the zero hash: the empty log, a prefix of every log.
			if a.Hash != ([32]byte{}) {
				res.Status, res.Problem = AnchorMismatch, "seq 0 is the empty log, whose hash is zero"
			}
			out = append(out, res)
			continue
		}
		r, ok, err := get(a.Seq)
		var ce *CorruptError
		switch {
		case errors.Is(err, errPruned):
			res.Status = AnchorPruned
			res.Problem = fmt.Sprintf("record %d was pruned (archived): check this anchor against the archive (signerctl audit verify --archive FILE)", a.Seq)
		case errors.As(err, &ce):
			res.Status = AnchorMismatch
			res.Problem = fmt.Sprintf("record %d is unreadable (%s): it is not the anchored record; the log was altered after the anchor was taken", a.Seq, ce.Problem)
		case err != nil:
			return nil, err
		case !ok:
			res.Status = AnchorMissing
			res.Problem = fmt.Sprintf("the log has no record %d (its head is seq %d): it was truncated or rolled back after the anchor was taken", a.Seq, head)
		case r.Hash != a.Hash:
			res.Status = AnchorMismatch
			res.Found = "0x" + hex.EncodeToString(r.Hash[:])
			res.Problem = fmt.Sprintf("record %d has hash %s, the anchor says 0x%s: the log was rewritten after the anchor was taken", a.Seq, res.Found, hex.EncodeToString(a.Hash[:]))
		}
		out = append(out, res)
	}
	return out, nil
}

// AddAnchors records anchor results in the report: OK becomes false if any anchor failed (the
// chain fields and FirstBad are left as they are). It returns an *AnchorError when an anchor
// failed, else nil.
func (rep *Report) AddAnchors(results []AnchorResult) error {
	rep.Anchors = append(rep.Anchors, results...)
	var ae *AnchorError
	for _, r := range results {
		if r.Status == AnchorOK || r.Status == AnchorPruned {
			continue
		}
		if ae == nil {
			ae = &AnchorError{First: r}
		}
		ae.Failed++
	}
	if ae == nil {
		return nil
	}
	rep.OK = false
	return ae
}

// VerifyAnchoredTx is VerifyTx followed by CheckAnchors in the same transaction. The error is
// the chain's *CorruptError if the chain is broken, else an *AnchorError if an anchor failed
// (both match ErrCorrupt), else an I/O fault or nil. The report holds every anchor's result
// either way.
func VerifyAnchoredTx(tx *bucketstore.Tx, anchors []Anchor) (Report, error) {
	rep, verr := VerifyTx(tx)
	if verr != nil && !errors.Is(verr, ErrCorrupt) {
		return rep, verr
	}
	if len(anchors) == 0 {
		return rep, verr
	}
	head := rep.HeadSeq
	if seq, _, err := Head(tx); err == nil {
		head = seq
	}
	cp, err := CheckpointTx(tx)
	if err != nil {
		return rep, err
	}
	res, err := CheckAnchorsAfter(anchors, head, cp, func(s uint64) (Record, bool, error) { return Get(tx, s) })
	if err != nil {
		return rep, err
	}
	if aerr := rep.AddAnchors(res); verr == nil {
		verr = aerr
	}
	return rep, verr
}

// VerifyAnchored is VerifyAnchoredTx in a read transaction of db.
func VerifyAnchored(db *bucketstore.DB, anchors []Anchor) (rep Report, err error) {
	err = db.View(func(tx *bucketstore.Tx) error {
		rep, err = VerifyAnchoredTx(tx, anchors)
		return err
	})
	return rep, err
}
