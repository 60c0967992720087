package ledger

import (
	"github.com/signerd/signerd/signerd/bucketstore"
)

// maxHot bounds the hot record cache; past it the cache is emptied (Commit then reads from the
// file, as it does for records reserved by an earlier process).
const maxHot = 4096

// hotRecords is a committer-only cache of the records Reserve and ReserveEarly wrote in this
// process, so that Commit does not read and decode the record it is about to sign.
//
// It is only a cache, never a source of truth: Commit uses an entry only after checking, in its
// own transaction, that the record is still in the pending index (reserved, neither signed nor
// released). An entry whose reservation's transaction failed is therefore never used (that
// record is not pending on disk), record ids are never reused, and the cached fields (who,
// wallet, tab, req, digest, scheme, claims hash) never change after the reservation. Entries
// are removed when Commit or Release takes them.
type hotRecords struct {
	m map[RecordID]*PaymentRecord
}

func (h *hotRecords) put(rec *PaymentRecord) {
	if len(h.m) >= maxHot {
		clear(h.m)
	}
	h.m[rec.ID] = rec
}

// take removes and returns the cached record id, or nil.
func (h *hotRecords) take(id RecordID) *PaymentRecord {
	r := h.m[id]
	if r != nil {
		delete(h.m, id)
	}
	return r
}

// isPending reports whether record id is in the pending index (reserved, neither signed nor
// released).
func isPending(tx *bucketstore.Tx, id RecordID) bool {
	return tx.Bucket(bucketPending).Get(id.key()) != nil
}

// appendOnly sets b's fill percent to 100% for this transaction and returns b. Used for the
// buckets keyed by an increasing sequence (payment records, signatures, the pending index):
// they are appended at the end, so bbolt's default of half-full pages only doubles their page
// count (and the size of the branch nodes a transaction reads and rewrites). It changes how
// pages are laid out, never what is stored.
func appendOnly(b *bucketstore.Bucket) *bucketstore.Bucket {
	b.FillPercent = 1.0
	return b
}
