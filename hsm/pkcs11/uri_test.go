package pkcs11

import (
	"bytes"
	"errors"
	"testing"

	"github.com/signerd/signerd/hsm"
)

func TestParseURI(t *testing.T) {
	ok := []struct {
		in   string
		want URI
	}{
		{"pkcs11:token=wallet;id=%01%02;object=hot;type=private", URI{Token: "wallet", ID: []byte{1, 2}, Object: "hot", Type: "private"}},
		{"pkcs11:id=%C1%4e", URI{ID: []byte{0xc1, 0x4e}}},
		{"pkcs11:id=abc", URI{ID: []byte("abc")}},
		{"pkcs11:object=my%20key;id=%00;token=a%3Bb", URI{Object: "my key", ID: []byte{0}, Token: "a;b"}},
		{"pkcs11:token=%E2%82%AC;id=x", URI{Token: "€", ID: []byte("x")}},
	}
	for _, c := range ok {
		got, err := ParseURI(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		if got.Token != c.want.Token || got.Object != c.want.Object || got.Type != c.want.Type || !bytes.Equal(got.ID, c.want.ID) {
			t.Fatalf("%q: got %+v want %+v", c.in, got, c.want)
		}
		back, err := ParseURI(got.String())
		if err != nil || !bytes.Equal(back.ID, got.ID) || back.Token != got.Token || back.Object != got.Object {
			t.Fatalf("%q: round trip via %q: %+v %v", c.in, got.String(), back, err)
		}
	}
	bad := []string{
		"", "pkcs11", "pkcs11:", "PKCS11:id=1", "tpm:id=1",
		"pkcs11:token=w",                    // no id
		"pkcs11:id=",                        // empty id
		"pkcs11:id=1;id=2",                  // repeated
		"pkcs11:id=1;;token=w",              // empty attribute
		"pkcs11:id=1;token",                 // no value
		"pkcs11:id=1;slot-id=3",             // unsupported attribute
		"pkcs11:id=1;pin-value=1234",        // a PIN never
		"pkcs11:id=1?pin-value=1234",        // query
		"pkcs11:id=1?module-path=/tmp/x.so", // query
		"pkcs11:id=1#frag",                  // fragment
		"pkcs11:id=%4",                      // truncated escape
		"pkcs11:id=%",                       // truncated escape
		"pkcs11:id=%G0",                     // bad hex
		"pkcs11:id=a b",                     // unescaped space
		"pkcs11:id=1;type=public",           // not a private key
		"pkcs11:id=1;object=a/b",            // '/' must be escaped in a path attribute
	}
	for _, s := range bad {
		if _, err := ParseURI(s); !errors.Is(err, hsm.ErrBadURI) {
			t.Errorf("%q: %v", s, err)
		}
	}
}

func TestURIString(t *testing.T) {
	u := URI{Token: "my token", ID: []byte{0xab, 'A'}, Object: "k;1", Type: "private"}
	if got, want := u.String(), "pkcs11:token=my%20token;id=%AB%41;object=k%3B1;type=private"; got != want {
		t.Fatalf("%s, want %s", got, want)
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"pkcs11:token=wallet;id=%01%02;object=hot;type=private", "pkcs11:id=%zz", "pkcs11:id=1?x=y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, hsm.ErrBadURI) {
				t.Fatalf("%q: error outside ErrBadURI: %v", s, err)
			}
			return
		}
		back, err := ParseURI(u.String())
		if err != nil || !bytes.Equal(back.ID, u.ID) || back.Token != u.Token || back.Object != u.Object {
			t.Fatalf("%q: canonical form %q does not round-trip: %v", s, u.String(), err)
		}
	})
}
