package e2e

import (
	"testing"
)

func TestAllowAndReplay(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.start()
	c := e.agentClient()
	cl := newClaims("1000")
	st, g, ae, err := sign(c, cl, nil)
	if err != nil || st != 200 {
		t.Fatalf("allow: %d %+v %v\n%s", st, ae, err, e.log())
	}
	verifyGuarantee(t, g)
	// Same (wallet, tab, req) and identical claims: the stored signature again.
	st, g2, ae, err := sign(c, cl, nil)
	if err != nil || st != 200 || g2.Signature != g.Signature || g2.RecordID != g.RecordID {
		t.Fatalf("replay same claims: %d %+v %v: %s vs %s", st, ae, err, g2.Signature, g.Signature)
	}
	// Same key, different claims: 409.
	st, _, ae, err = sign(c, cl.with("amount", "1001"), nil)
	if err != nil || st != 409 || ae.Code != "replay_conflict" {
		t.Fatalf("replay different claims: %d %+v %v", st, ae, err)
	}
	// Next req id on the same tab is fine.
	st, g3, ae, err := sign(c, cl.with("req_id", "0x2"), nil)
	if err != nil || st != 200 || g3.Signature == g.Signature {
		t.Fatalf("next req: %d %+v %v", st, ae, err)
	}
	verifyGuarantee(t, g3)
	e.stopClean()
}
