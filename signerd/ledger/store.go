package ledger

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"strconv"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/fxamacker/cbor/v2"
	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/policyengine"
)

// Bucket names in the store (besides the audit package's buckets).
var (
	bucketMeta    = []byte("meta")    // "schema" → version; "id_hw" → record id high-water mark (8 BE)
	bucketRecords = []byte("records") // RecordID (8 bytes BE) → CBOR diskRecord
	bucketReplay  = []byte("replay")  // wallet(20)‖tab(32)‖req(32) → claimsHash(32)‖RecordID(8)‖status(1)
	bucketUsage   = []byte("usage")   // budgetKey‖0x00‖window ns(8)‖bucket(8, sign-flipped) → amount (minimal BE bytes)
	bucketState   = []byte("state")   // generic key → value (kill switch, approvals)
	bucketSigs    = []byte("sigs")    // RecordID (8 bytes BE) → signed time ns (8 BE) ‖ signature
	bucketPending = []byte("pending") // RecordID (8 bytes BE) → empty: records reserved, neither signed nor released

	schemaKey     = []byte("schema")
	schemaVersion = []byte("1")
	idHWKey       = []byte("id_hw")
)

// idBlock is how many record ids one high-water mark write covers (see Ledger.nextID).
const idBlock = 1024

// RecordID identifies a payment record. IDs come from the records bucket's sequence: unique, increasing and
// never reused in one ledger file. Its text form is the decimal number.
type RecordID uint64

// String returns the decimal form.
func (id RecordID) String() string { return strconv.FormatUint(uint64(id), 10) }

// MarshalText returns the decimal form.
func (id RecordID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses the decimal form.
func (id *RecordID) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil || v == 0 {
		return fmt.Errorf("ledger: bad record id %q", b)
	}
	*id = RecordID(v)
	return nil
}

// ParseRecordID parses the decimal form.
func ParseRecordID(s string) (RecordID, error) {
	var id RecordID
	err := id.UnmarshalText([]byte(s))
	return id, err
}

func (id RecordID) key() []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(id))
	return k[:]
}

// Status is the life-cycle state of a payment record.
type Status string

// Record states: reserved → signed, or reserved → released.
const (
	StatusReserved Status = "reserved"
	StatusSigned   Status = "signed"
	StatusReleased Status = "released"
)

func (s Status) byte() byte {
	switch s {
	case StatusReserved:
		return 'r'
	case StatusSigned:
		return 's'
	case StatusReleased:
		return 'x'
	}
	return 0
}

// ChargeRecord is one budget charge as applied: which counter, which bucket, how much.
type ChargeRecord struct {
	Budget string        `json:"budget"`
	Key    string        `json:"key"`
	Window time.Duration `json:"window"`
	Bucket int64         `json:"bucket"` // bucket index the amount was added to (refunds go to the same bucket)
	Amount *big.Int      `json:"amount"`
	Count  bool          `json:"count,omitempty"`
}

// PaymentRecord is the ledger's record of one signing request: request → principal → policy
// hash and rule → digest → signature → outcome.
type PaymentRecord struct {
	ID         RecordID
	Status     Status
	Created    time.Time
	Updated    time.Time
	Principal  string
	Agent      string
	Wallet     common.Address
	TabID      *big.Int
	ReqID      *big.Int
	ClaimsHash [32]byte // SHA-256 of Claims
	Claims     []byte   // canonical claims encoding as given to Reserve
	PolicyHash []byte
	Rule       string
	Digest     [32]byte
	Scheme     string
	TaskID     string
	Charges    []ChargeRecord
	Signature  []byte // set when Status is signed
	Code       string // failure code when Status is released
	Reason     string // release reason
}

// MarshalJSON renders the record for the admin API (hex bytes, decimal integers as strings).
func (r PaymentRecord) MarshalJSON() ([]byte, error) {
	type charge struct {
		Budget  string `json:"budget"`
		Key     string `json:"key"`
		WindowS int64  `json:"window_s"`
		Bucket  int64  `json:"bucket"`
		Amount  string `json:"amount"`
		Count   bool   `json:"count,omitempty"`
	}
	cs := make([]charge, len(r.Charges))
	for i, c := range r.Charges {
		cs[i] = charge{c.Budget, c.Key, int64(c.Window / time.Second), c.Bucket, c.Amount.String(), c.Count}
	}
	return json.Marshal(struct {
		ID         RecordID `json:"record_id"`
		Status     Status   `json:"status"`
		Created    string   `json:"created"`
		Updated    string   `json:"updated"`
		Principal  string   `json:"principal,omitempty"`
		Agent      string   `json:"agent,omitempty"`
		Wallet     string   `json:"wallet"`
		TabID      string   `json:"tab_id"`
		ReqID      string   `json:"req_id"`
		ClaimsHash string   `json:"claims_hash"`
		Claims     string   `json:"claims,omitempty"`
		PolicyHash string   `json:"policy_hash,omitempty"`
		Rule       string   `json:"rule,omitempty"`
		Digest     string   `json:"digest"`
		Scheme     string   `json:"scheme,omitempty"`
		TaskID     string   `json:"task_id,omitempty"`
		Charges    []charge `json:"charges"`
		Signature  string   `json:"signature,omitempty"`
		Code       string   `json:"code,omitempty"`
		Reason     string   `json:"reason,omitempty"`
	}{r.ID, r.Status, r.Created.UTC().Format(time.RFC3339Nano), r.Updated.UTC().Format(time.RFC3339Nano),
		r.Principal, r.Agent, r.Wallet.Hex(), r.TabID.String(), r.ReqID.String(), hx(r.ClaimsHash[:]),
		claimsText(r.Claims), hx(r.PolicyHash), r.Rule, hx(r.Digest[:]), r.Scheme, r.TaskID, cs,
		hx(r.Signature), r.Code, r.Reason})
}

// claimsText shows JSON claims as text and anything else as hex.
func claimsText(b []byte) string {
	if json.Valid(b) {
		return string(b)
	}
	return hx(b)
}

func hx(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return "0x" + hex.EncodeToString(b)
}

// diskRecord is the stored form of a PaymentRecord (deterministic CBOR, integer keys).
type diskRecord struct {
	ID         uint64       `cbor:"1,keyasint"`
	Status     string       `cbor:"2,keyasint"`
	Created    int64        `cbor:"3,keyasint"`
	Updated    int64        `cbor:"4,keyasint"`
	Principal  string       `cbor:"5,keyasint,omitempty"`
	Agent      string       `cbor:"6,keyasint,omitempty"`
	Wallet     []byte       `cbor:"7,keyasint"`
	TabID      []byte       `cbor:"8,keyasint"`
	ReqID      []byte       `cbor:"9,keyasint"`
	ClaimsHash []byte       `cbor:"10,keyasint"`
	Claims     []byte       `cbor:"11,keyasint,omitempty"`
	PolicyHash []byte       `cbor:"12,keyasint,omitempty"`
	Rule       string       `cbor:"13,keyasint,omitempty"`
	Digest     []byte       `cbor:"14,keyasint"`
	Scheme     string       `cbor:"15,keyasint,omitempty"`
	TaskID     string       `cbor:"16,keyasint,omitempty"`
	Charges    []diskCharge `cbor:"17,keyasint,omitempty"`
	Signature  []byte       `cbor:"18,keyasint,omitempty"`
	Code       string       `cbor:"19,keyasint,omitempty"`
	Reason     string       `cbor:"20,keyasint,omitempty"`
}

type diskCharge struct {
	Budget string `cbor:"1,keyasint"`
	Key    string `cbor:"2,keyasint"`
	Window int64  `cbor:"3,keyasint"`
	Bucket int64  `cbor:"4,keyasint"`
	Amount []byte `cbor:"5,keyasint"`
	Count  bool   `cbor:"6,keyasint,omitempty"`
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	if decMode, err = (cbor.DecOptions{DupMapKey: cbor.DupMapKeyEnforcedAPF,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField, MaxNestedLevels: 8}).DecMode(); err != nil {
		panic(err)
	}
}

func encodeRecord(r *PaymentRecord) ([]byte, error) {
	d := diskRecord{ID: uint64(r.ID), Status: string(r.Status), Created: r.Created.UnixNano(),
		Updated: r.Updated.UnixNano(), Principal: r.Principal, Agent: r.Agent, Wallet: r.Wallet[:],
		TabID: r.TabID.Bytes(), ReqID: r.ReqID.Bytes(), ClaimsHash: r.ClaimsHash[:], Claims: r.Claims,
		PolicyHash: r.PolicyHash, Rule: r.Rule, Digest: r.Digest[:], Scheme: r.Scheme, TaskID: r.TaskID,
		Signature: r.Signature, Code: r.Code, Reason: r.Reason}
	for _, c := range r.Charges {
		d.Charges = append(d.Charges, diskCharge{c.Budget, c.Key, int64(c.Window), c.Bucket, c.Amount.Bytes(), c.Count})
	}
	return encMode.Marshal(&d)
}

func decodeRecord(id RecordID, b []byte) (*PaymentRecord, error) {
	var d diskRecord
	if err := decMode.Unmarshal(b, &d); err != nil {
		return nil, corruptf("payment record %d undecodable: %v", id, err)
	}
	if d.ID != uint64(id) || len(d.Wallet) != 20 || len(d.ClaimsHash) != 32 || len(d.Digest) != 32 ||
		len(d.TabID) > 32 || len(d.ReqID) > 32 || Status(d.Status).byte() == 0 {
		return nil, corruptf("payment record %d malformed", id)
	}
	r := &PaymentRecord{ID: id, Status: Status(d.Status), Created: time.Unix(0, d.Created).UTC(),
		Updated: time.Unix(0, d.Updated).UTC(), Principal: d.Principal, Agent: d.Agent,
		TabID: new(big.Int).SetBytes(d.TabID), ReqID: new(big.Int).SetBytes(d.ReqID), Claims: d.Claims,
		PolicyHash: d.PolicyHash, Rule: d.Rule, Scheme: d.Scheme, TaskID: d.TaskID,
		Signature: d.Signature, Code: d.Code, Reason: d.Reason}
	copy(r.Wallet[:], d.Wallet)
	copy(r.ClaimsHash[:], d.ClaimsHash)
	copy(r.Digest[:], d.Digest)
	for _, c := range d.Charges {
		if len(c.Amount) > 64 {
			return nil, corruptf("payment record %d: charge amount too long", id)
		}
		r.Charges = append(r.Charges, ChargeRecord{c.Budget, c.Key, time.Duration(c.Window), c.Bucket,
			new(big.Int).SetBytes(c.Amount), c.Count})
	}
	return r, nil
}

// getRecord reads record id with its signature, if any.
func getRecord(tx *bucketstore.Tx, id RecordID) (*PaymentRecord, error) {
	v := tx.Bucket(bucketRecords).Get(id.key())
	if v == nil {
		return nil, ErrNotFound
	}
	return loadRecord(tx, id, v)
}

// loadRecord decodes a stored record and merges its signature from bucketSigs: Commit stores
// the signature there (appending to an ordered bucket) instead of rewriting the record, which
// keeps the pages a commit dirties few.
func loadRecord(tx *bucketstore.Tx, id RecordID, v []byte) (*PaymentRecord, error) {
	r, err := decodeRecord(id, v)
	if err != nil {
		return nil, err
	}
	if sv := tx.Bucket(bucketSigs).Get(id.key()); sv != nil {
		if len(sv) <= 8 {
			return nil, corruptf("signature entry of record %d: %d bytes", id, len(sv))
		}
		if r.Status == StatusReleased {
			return nil, corruptf("record %d is both released and signed", id)
		}
		r.Status, r.Signature = StatusSigned, append([]byte(nil), sv[8:]...)
		r.Updated = time.Unix(0, int64(binary.BigEndian.Uint64(sv[:8]))).UTC()
	}
	return r, nil
}

func putSignature(tx *bucketstore.Tx, id RecordID, now time.Time, sig []byte) error {
	v := make([]byte, 8, 8+len(sig))
	binary.BigEndian.PutUint64(v, uint64(now.UnixNano()))
	return tx.Bucket(bucketSigs).Put(id.key(), append(v, sig...))
}

// putRecord stores r without its signature (Status reserved or released; signatures live in
// bucketSigs).
func putRecord(tx *bucketstore.Tx, r *PaymentRecord) error {
	if r.Status == StatusSigned {
		return fmt.Errorf("ledger: internal: putRecord of a signed record")
	}
	b, err := encodeRecord(r)
	if err != nil {
		return fmt.Errorf("ledger: encode record: %w", err)
	}
	return tx.Bucket(bucketRecords).Put(r.ID.key(), b)
}

// replayKey is wallet(20) ‖ tab_id(32 BE) ‖ req_id(32 BE).
func replayKey(wallet common.Address, tab, req *big.Int) []byte {
	k := make([]byte, 84)
	copy(k, wallet[:])
	tab.FillBytes(k[20:52])
	req.FillBytes(k[52:84])
	return k
}

type replayEntry struct {
	claims [32]byte
	id     RecordID
	status byte
}

func (e replayEntry) bytes() []byte {
	v := make([]byte, 41)
	copy(v, e.claims[:])
	binary.BigEndian.PutUint64(v[32:40], uint64(e.id))
	v[40] = e.status
	return v
}

func parseReplay(k, v []byte) (replayEntry, error) {
	if len(v) != 41 {
		return replayEntry{}, corruptf("replay entry %x: %d bytes, want 41", k, len(v))
	}
	var e replayEntry
	copy(e.claims[:], v)
	e.id = RecordID(binary.BigEndian.Uint64(v[32:40]))
	e.status = v[40]
	return e, nil
}

// usagePrefix is budgetKey ‖ 0x00 ‖ window ns (8 bytes BE).
func usagePrefix(key string, window time.Duration) []byte {
	p := make([]byte, 0, len(key)+1+8+8)
	p = append(p, key...)
	p = append(p, 0)
	return binary.BigEndian.AppendUint64(p, uint64(window))
}

// usageKey appends the bucket index with its sign bit flipped so keys sort by index.
func usageKey(prefix []byte, bucket int64) []byte {
	k := make([]byte, len(prefix), len(prefix)+8)
	copy(k, prefix)
	return binary.BigEndian.AppendUint64(k, uint64(bucket)^(1<<63))
}

// splitUsageKey reverses usageKey.
func splitUsageKey(k []byte) (key string, window time.Duration, bucket int64, ok bool) {
	if len(k) < 17 || k[len(k)-17] != 0 {
		return "", 0, 0, false
	}
	n := len(k) - 17
	window = time.Duration(binary.BigEndian.Uint64(k[n+1 : n+9]))
	bucket = int64(binary.BigEndian.Uint64(k[n+9:]) ^ (1 << 63))
	return string(k[:n]), window, bucket, true
}

// usageTx sums the buckets of (key, window) in the sliding window at now, using policyengine's
// bucket scheme (the same one the engine and MemLedger use). Buckets after now's bucket count
// too: they hold charges made while the clock was ahead (before it was stepped back), and a
// budget must never be spendable twice because of a clock step.
func usageTx(tx *bucketstore.Tx, key string, window time.Duration, now time.Time) (*big.Int, error) {
	sum := new(big.Int)
	first := policyengine.WindowFirstBucket(window, now)
	prefix := usagePrefix(key, window)
	c := tx.Bucket(bucketUsage).Cursor()
	var v1 big.Int
	for k, v := c.Seek(usageKey(prefix, first)); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, v = c.Next() {
		if _, _, _, ok := splitUsageKey(k); !ok {
			return nil, corruptf("usage key %x malformed", k)
		}
		sum.Add(sum, v1.SetBytes(v))
	}
	return sum, nil
}

// pruneUsage deletes every bucket older than its window's first bucket at now. Lifetime
// counters (window 0) are kept. The committer calls it with a conservative time (see runGroup):
// never a clock that went backwards, never ahead of the elapsed monotonic time.
func pruneUsage(tx *bucketstore.Tx, now time.Time) (int, error) {
	c := tx.Bucket(bucketUsage).Cursor()
	n := 0
	for k, _ := c.First(); k != nil; {
		_, w, b, ok := splitUsageKey(k)
		if ok && w > 0 && b < policyengine.WindowFirstBucket(w, now) {
			if err := c.Delete(); err != nil {
				return n, err
			}
			n++
			// After Delete the cursor points at the next item; re-read it.
			k, _ = c.Seek(k)
			continue
		}
		k, _ = c.Next()
	}
	return n, nil
}

func corruptf(format string, a ...any) error {
	return &CorruptError{Problem: fmt.Sprintf(format, a...)}
}

// CorruptError is a ledger corruption (undecodable or malformed stored data). It matches
// ErrCorrupt.
type CorruptError struct{ Problem string }

func (e *CorruptError) Error() string { return "ledger: corrupt: " + e.Problem }

// Is makes CorruptError match ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
