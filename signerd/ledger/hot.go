package ledger

import (
	"github.com/signerd/signerd/signerd/bucketstore"
)

// maxHot bounds the hot record cache; past it the cache is emptied (Commit then reads from the
// file, as it does for records reserved by an earlier process).
const maxHot = 4096

// hotRecords is a committer-only cache of the records Reserve wrote in this
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
