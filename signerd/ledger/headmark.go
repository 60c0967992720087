package ledger

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/bucketstore"
)

// The head mark (file PATH.head) detects the loss of durable writes that the store itself
// cannot tell from a crash: the write-ahead log's newest records damaged or cut off. After every
// shared fsync, the syncer overwrites the mark with the audit head that fsync made durable (seq
// and hash, 44 bytes with a CRC, written in place, not fsynced: the mark may lag the ledger
// after a power loss, never lead it). At Open, a mark ahead of the ledger's audit head — or
// naming a record whose hash differs — means records that were durable are gone: the ledger
// refuses to open, naming both heads.
type headMark struct {
	f *os.File
}

const headMarkSize = 8 + 32 + 4

func openHeadMark(path string) (*headMark, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, &StoreError{Op: "open head mark", Err: err}
	}
	return &headMark{f: f}, nil
}

// read returns the mark (ok false: never written, or torn by a crash while written).
func (h *headMark) read() (cp audit.Checkpoint, ok bool, err error) {
	b := make([]byte, headMarkSize)
	n, err := h.f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return cp, false, &StoreError{Op: "read head mark", Err: err}
	}
	if n < headMarkSize || crc32.ChecksumIEEE(b[:40]) != binary.BigEndian.Uint32(b[40:]) {
		return cp, false, nil
	}
	cp.Seq = binary.BigEndian.Uint64(b[:8])
	copy(cp.Hash[:], b[8:40])
	return cp, true, nil
}

// write records head as durable.
func (h *headMark) write(head audit.Checkpoint) error {
	b := make([]byte, 0, headMarkSize)
	b = binary.BigEndian.AppendUint64(b, head.Seq)
	b = append(b, head.Hash[:]...)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	_, err := h.f.WriteAt(b, 0)
	return err
}

func (h *headMark) close() error { return h.f.Close() }

// checkHeadMark compares the mark with the ledger's audit chain (see headMark).
func checkHeadMark(tx *bucketstore.Tx, m audit.Checkpoint, path string) error {
	seq, hash, err := audit.Head(tx)
	if err != nil {
		return err
	}
	if m.Seq > seq {
		return corruptf("audit records %d..%d were durable (head mark %s.head) but are gone: the store's newest writes were damaged or cut off",
			seq+1, m.Seq, path)
	}
	if m.Seq == seq && m.Hash != hash {
		return corruptf("the audit head (seq %d) is not the record that was made durable (head mark %s.head)", seq, path)
	}
	if m.Seq < seq && m.Seq > 0 {
		if r, ok, err := audit.Get(tx, m.Seq); err == nil && ok && r.Hash != m.Hash {
			return corruptf("audit record %d is not the one that was made durable (head mark %s.head)", m.Seq, path)
		}
	}
	return nil
}

// CheckHeadMark compares the head mark beside the store at path (if any) with its audit chain,
// in a read transaction of an offline tool (signerctl --db). A mark ahead of the chain is a
// corruption error naming the lost records.
func CheckHeadMark(tx *bucketstore.Tx, path string) error {
	f, err := os.Open(path + ".head")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &StoreError{Op: "read head mark", Err: err}
	}
	h := &headMark{f: f}
	defer h.close()
	m, ok, err := h.read()
	if err != nil || !ok {
		return err
	}
	return checkHeadMark(tx, m, path)
}
