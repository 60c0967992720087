package policyengine

import (
	"path/filepath"
	"reflect"
	"testing"
)

func TestApprovalsInfo(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	got := p.Approvals()
	want := []ApprovalInfo{{ID: "large-research-payment", Group: "finance"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Approvals() = %+v, want %+v", got, want)
	}
	if p.Summary().Approvals != len(got) {
		t.Fatalf("Summary().Approvals = %d, Approvals() has %d", p.Summary().Approvals, len(got))
	}
}
