package bucketstore

import (
	"bytes"

	"github.com/cockroachdb/pebble/v2"
)

// Cursor walks a bucket's keys in order. Positioning methods return the key and value (copies)
// or nil, nil past either end. A cursor sees the writes its transaction made before each
// positioning call, its own Delete included.
type Cursor struct {
	b   *Bucket
	it  *pebble.Iterator
	gen uint64 // tx.gen when it was created
	cur []byte // full key at the current position (nil: unpositioned or past an end)
	err error
}

// Cursor returns a cursor over the bucket; it is closed with its transaction.
func (b *Bucket) Cursor() *Cursor {
	c := &Cursor{b: b}
	b.tx.cursors = append(b.tx.cursors, c)
	return c
}

// Err returns the first iteration fault the cursor met (a walk that met one ends early).
func (c *Cursor) Err() error { return c.err }

// fail records an iteration fault on the cursor and its transaction.
func (c *Cursor) fail(err error) {
	if c.err == nil {
		c.err = err
	}
	if c.b.tx.err == nil {
		c.b.tx.err = err
	}
}

func (c *Cursor) close() {
	if c.it != nil {
		_ = c.it.Close()
		c.it = nil
	}
}

// iter returns an iterator that sees every write of the transaction so far.
func (c *Cursor) iter() *pebble.Iterator {
	if c.it != nil && c.gen == c.b.tx.gen {
		return c.it
	}
	c.close()
	it, err := c.b.tx.r.NewIter(&pebble.IterOptions{LowerBound: c.b.prefix, UpperBound: c.b.upper})
	if err != nil {
		c.fail(classify(err, "iterate"))
		return nil
	}
	c.it, c.gen = it, c.b.tx.gen
	return it
}

// at returns the current position's key and value.
func (c *Cursor) at(ok bool) ([]byte, []byte) {
	if !ok {
		if err := c.it.Error(); err != nil {
			c.fail(classify(err, "iterate"))
		}
		c.cur = nil
		return nil, nil
	}
	c.cur = append(c.cur[:0], c.it.Key()...)
	v, err := c.it.ValueAndErr()
	if err != nil {
		c.fail(classify(err, "read value"))
		c.cur = nil
		return nil, nil
	}
	k := append([]byte(nil), c.cur[len(c.b.prefix):]...)
	return k, append(make([]byte, 0, len(v)), v...)
}

// First moves to the first key.
func (c *Cursor) First() ([]byte, []byte) {
	it := c.iter()
	if it == nil {
		return nil, nil
	}
	return c.at(it.First())
}

// Last moves to the last key.
func (c *Cursor) Last() ([]byte, []byte) {
	it := c.iter()
	if it == nil {
		return nil, nil
	}
	return c.at(it.Last())
}

// Seek moves to the first key ≥ k.
func (c *Cursor) Seek(k []byte) ([]byte, []byte) {
	it := c.iter()
	if it == nil {
		return nil, nil
	}
	return c.at(it.SeekGE(c.b.key(k)))
}

// Next moves to the next key.
func (c *Cursor) Next() ([]byte, []byte) {
	if c.cur == nil {
		return nil, nil
	}
	if c.it != nil && c.gen == c.b.tx.gen {
		return c.at(c.it.Next())
	}
	cur := append([]byte(nil), c.cur...)
	it := c.iter()
	if it == nil {
		return nil, nil
	}
	ok := it.SeekGE(cur)
	if ok && bytes.Equal(it.Key(), cur) {
		ok = it.Next()
	}
	return c.at(ok)
}

// Prev moves to the previous key.
func (c *Cursor) Prev() ([]byte, []byte) {
	if c.cur == nil {
		return nil, nil
	}
	if c.it != nil && c.gen == c.b.tx.gen {
		return c.at(c.it.Prev())
	}
	cur := append([]byte(nil), c.cur...)
	it := c.iter()
	if it == nil {
		return nil, nil
	}
	return c.at(it.SeekLT(cur))
}

// Delete removes the key at the cursor; the cursor stays there (Next moves to the key after it).
func (c *Cursor) Delete() error {
	if c.cur == nil {
		return nil
	}
	return c.b.tx.del(append([]byte(nil), c.cur...))
}
