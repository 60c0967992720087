package audit

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/signerd/signerd/signerd/bucketstore"
)

// TestBroadcastKind: a broadcast record is a known kind: it appends, the chain with it verifies,
// and the export names it with its code and attrs.
func TestBroadcastKind(t *testing.T) {
	if !KindBroadcast.Valid() {
		t.Fatal("broadcast is not a valid kind")
	}
	db := newLog(t, 2)
	err := db.Update(func(tx *bucketstore.Tx) error {
		_, err := Append(tx, t0, Event{Kind: KindBroadcast, Decision: "allow", Code: "tx_broadcast", RecordID: 7,
			Attrs: map[string]string{"tx_hash": "0x01", "nonce": "3", "request_id": "dep-1"}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(db); err != nil || rep.Records != 3 {
		t.Fatalf("%+v %v", rep, err)
	}
	var buf bytes.Buffer
	if err := Export(db, &buf, 3); err != nil {
		t.Fatal(err)
	}
	var m struct {
		Kind  string            `json:"kind"`
		Code  string            `json:"code"`
		Attrs map[string]string `json:"attrs"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &m); err != nil || m.Kind != "broadcast" || m.Code != "tx_broadcast" ||
		m.Attrs["request_id"] != "dep-1" {
		t.Fatalf("export %q: %+v %v", buf.String(), m, err)
	}
}
