package ledger

import (
	"context"
	"io"
	"math/big"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/signerd/audit"
)

// Engine is the ledger as the daemon uses it: every operation a storage engine must provide,
// with its atomicity. *Ledger (this package, pebble through bucketstore) is the embedded
// engine; a second engine (PostgreSQL, for a fleet) implements the same interface in a file of
// its own and passes the same tests.
//
// The rules every engine keeps:
//   - Each write below is all-or-nothing together with the audit record(s) it names: after a
//     crash either both are there or neither is.
//   - "Durable" means on stable storage; "applied" means visible to every later read and write.
//   - Writes are serialised per ledger so that every check sees every earlier write (no
//     overspend under any concurrency, no lost update); reads never wait for writes.
//   - After a failed write of unknown outcome the engine takes no more writes (Health reports
//     it) until it is reopened: a signature is never sent on an unknown outcome.
type Engine interface {
	// Reserve checks the replay key and every budget charge and, if all pass, records the intent
	// (payment record reserved, replay entry, debits, decision audit record) atomically. A
	// Reserved or Resumable result is returned once applied; Result.Durable reports when the
	// intent is durable (the caller signs meanwhile and sends only after it). Other outcomes
	// are returned durable. ResumeOnly reservations write nothing unless an identical intent
	// exists.
	Reserve(ctx context.Context, r Reservation) (Result, error)
	// RecordSignature applies the signature of a reserved record (status signed, signature
	// audit record) atomically, durable with the next durable write; Commit does the same and
	// returns once durable (for signatures that leave only after their record is durable).
	RecordSignature(ctx context.Context, id RecordID, sig []byte) (CommitResult, error)
	Commit(ctx context.Context, id RecordID, sig []byte) (CommitResult, error)
	// Release refunds a reserved record's charges, marks it released and frees its replay
	// key, with its two audit records, durably and atomically.
	Release(ctx context.Context, id RecordID, code, reason string) error
	// ReleaseUnsent releases every reserved record of a scheme whose signatures never leave
	// before their durable commit (at start-up, before serving), in one atomic write.
	ReleaseUnsent(ctx context.Context, scheme, reason string) (int, error)
	// PutState sets (nil: deletes) an operator state key with its audit record, durably and
	// atomically; GetState and StateWithPrefix read applied state.
	PutState(ctx context.Context, key string, value []byte, ev audit.Event) error
	GetState(key string) ([]byte, error)
	StateWithPrefix(prefix string) (map[string][]byte, error)
	// AppendAudit appends one audit record durably; AuditAsync queues one (applied and durable
	// with a later write, nobody waits).
	AppendAudit(ctx context.Context, ev audit.Event) (audit.Record, error)
	AuditAsync(ev audit.Event) error
	// ExportArchive writes what a prune at before would delete (reads only); Prune deletes
	// exactly that selection or nothing (ErrPlanChanged), with the audit checkpoint, the state
	// base and a retention audit record, atomically.
	ExportArchive(w io.Writer, before time.Time) (ArchiveSummary, error)
	Prune(ctx context.Context, req PruneRequest) (ArchiveSummary, error)

	// Reads, over applied state.
	Usage(key string, window time.Duration, now time.Time) (*big.Int, error)
	Spend(key string, window time.Duration, now time.Time) (Spend, error)
	SpendAll(now time.Time) ([]Spend, error)
	Record(id RecordID) (*PaymentRecord, error)
	Recent(n int) ([]*PaymentRecord, error)
	Pending(n int) ([]*PaymentRecord, error)
	ByTab(wallet common.Address, tab *big.Int) ([]*PaymentRecord, error)
	PossiblySigned() (int, error)
	AuditRecord(seq uint64) (audit.Record, bool, error)
	AuditHead() (uint64, [32]byte, error)
	AuditCheckpoint() (audit.Checkpoint, error)
	ExportAudit(w io.Writer, from uint64) error
	// VerifyAudit verifies the audit chain and the state bound to it (see verifystate.go).
	VerifyAudit() (audit.Report, error)

	// Operation.
	CheckInBackground(done func(error))
	Health() error
	Stats() Stats
	Path() string
	Close() error
}

var _ Engine = (*Ledger)(nil)
