//go:build !no_pkcs11

package pkcs11

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// Key metadata that PKCS#11 attributes cannot hold reliably (SoftHSM2 fails C_GetAttributeValue
// on a set CKA_START_DATE/CKA_END_DATE with CKR_GENERAL_ERROR) lives in one public CKO_DATA
// object per key: CKA_APPLICATION "signerd", CKA_LABEL "signerd/key/<hex CKA_ID>", CKA_VALUE a
// small JSON document. It is informational: the authoritative retirement is CKA_SIGN=false
// on the private key, which the token enforces.

const (
	metaApp    = "signerd"
	metaPrefix = "signerd/key/"
)

// meta is the JSON value of a key's metadata object.
type meta struct {
	CreatedAt time.Time `json:"created_at,omitzero"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
}

type metaObj struct {
	h    p11.ObjectHandle
	meta meta
}

// readMetas returns the metadata objects on the token, by CKA_ID.
func (b *Backend) readMetas(sh p11.SessionHandle) (map[string]metaObj, error) {
	hs, err := b.findObjects(sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_APPLICATION, metaApp),
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]metaObj, len(hs))
	for _, h := range hs {
		attrs, err := b.mod.ctx.GetAttributeValue(sh, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil), p11.NewAttribute(p11.CKA_VALUE, nil)})
		if err != nil {
			if deviceFailure(err) {
				return nil, err
			}
			continue
		}
		hexID, ok := strings.CutPrefix(string(attrs[0].Value), metaPrefix)
		id, err := hex.DecodeString(hexID)
		if !ok || err != nil {
			continue
		}
		var m meta
		if json.Unmarshal(attrs[1].Value, &m) != nil {
			continue
		}
		out[string(id)] = metaObj{h: h, meta: m}
	}
	return out, nil
}

// writeMeta creates or replaces the metadata object of key id.
func (b *Backend) writeMeta(sh p11.SessionHandle, id []byte, m meta) error {
	val, err := json.Marshal(m)
	if err != nil {
		return err
	}
	metas, err := b.readMetas(sh)
	if err != nil {
		return err
	}
	if old, ok := metas[string(id)]; ok {
		if err := b.mod.ctx.SetAttributeValue(sh, old.h, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, val)}); err == nil {
			return nil
		}
		if err := b.mod.ctx.DestroyObject(sh, old.h); err != nil {
			return err
		}
	}
	_, err = b.mod.ctx.CreateObject(sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, false),
		p11.NewAttribute(p11.CKA_APPLICATION, metaApp),
		p11.NewAttribute(p11.CKA_LABEL, metaPrefix+hex.EncodeToString(id)),
		p11.NewAttribute(p11.CKA_VALUE, val),
	})
	return err
}
