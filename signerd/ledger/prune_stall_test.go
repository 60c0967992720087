package ledger

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestExportStalledReaderDoesNotStallSigning: the archive is streamed to the CLI; a reader
// that stops reading (a CLI suspended with ^Z, a full slow disk) used to hold ExportArchive's
// read transaction open, and a bbolt read transaction blocks the remap a growing file needs,
// so every write (signing) stalled until the reader resumed. Now no transaction is open while
// the archive is written: writes that grow the file go on.
func TestExportStalledReaderDoesNotStallSigning(t *testing.T) {
	l, _, _ := pruneFixture(t)
	pr, pw := io.Pipe()
	t.Cleanup(func() { go io.Copy(io.Discard, pr) }) // before the ledger's Close (LIFO)
	exported := make(chan error, 1)
	go func() {
		_, err := l.ExportArchive(pw, t0.Add(time.Hour))
		pw.CloseWithError(err)
		exported <- err
	}()
	// Read the first bytes, then stop reading: the exporter blocks in Write.
	if _, err := pr.Read(make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	wrote := make(chan error, 1)
	go func() {
		big := strings.Repeat("x", 60<<10)
		for req := int64(100); req < 260; req++ { // ~10 MB: the file grows, bbolt remaps
			if _, err := l.Reserve(context.Background(), resv(3, req, `{"pad":"`+big+`"}`)); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writes stalled while the archive's reader was stalled")
	}
	var rest bytes.Buffer
	_, _ = rest.ReadFrom(pr)
	if !bytes.Contains(rest.Bytes(), []byte(`"type":"end"`)) {
		t.Fatal("archive without its trailer")
	}
	if err := <-exported; err != nil {
		t.Fatal(err)
	}
}
