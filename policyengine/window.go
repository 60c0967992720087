package policyengine

import "time"

// Sliding windows are bucketed so counter state stays bounded: a window w is split into buckets
// of BucketWidth(w) (w/60 rounded down to whole seconds, at least 1 s). A charge applied at time t
// lands in bucket BucketIndex(w, t). Usage at now is the sum of the buckets with index in
// [WindowFirstBucket(w, now), BucketIndex(w, now)] — in practice every bucket with index ≥ first,
// since a bucket after the current one only exists if a writer's clock was ahead, and counting
// it keeps the window conservative. The first bucket is the one containing now-w,
// so everything charged in the last w is always counted (never under-counts); up to one bucket
// width older than w may also be counted (errs towards denying). The durable ledger uses exactly
// these functions. Window 0 means a lifetime counter with a single bucket (index 0).

// BucketWidth is the bucket width used for window w.
func BucketWidth(window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	w := (window / 60).Truncate(time.Second)
	if w < time.Second {
		w = time.Second
	}
	return w
}

// BucketIndex is the bucket of window w that time t falls in (floor(t / width) since the Unix epoch).
func BucketIndex(window time.Duration, t time.Time) int64 {
	if window <= 0 {
		return 0
	}
	width := int64(BucketWidth(window))
	ns := t.UnixNano()
	q := ns / width
	if ns%width != 0 && ns < 0 {
		q--
	}
	return q
}

// WindowFirstBucket is the oldest bucket counted for window w at now: the one containing now-w.
func WindowFirstBucket(window time.Duration, now time.Time) int64 {
	if window <= 0 {
		return 0
	}
	return BucketIndex(window, now.Add(-window))
}

// WindowBuckets is how many buckets a window can span: the ring size a ledger needs per counter.
func WindowBuckets(window time.Duration) int {
	if window <= 0 {
		return 1
	}
	// current - first ≤ ceil(w/width), so ceil(w/width)+1 buckets.
	width := BucketWidth(window)
	n := int(window / width)
	if window%width != 0 {
		n++
	}
	return n + 1
}
