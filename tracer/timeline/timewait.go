// SPDX-License-Identifier: Apache-2.0

package timeline

import "github.com/tcpstate/tcpstate/tracer"

// A churning host has a minute of its connections in TIME_WAIT: 100,000 and
// more, against a few thousand alive. With Options.CompactTimewait the
// timeline keeps those in a second tier, a map of pointer-free values the
// garbage collector does not scan (about 90 bytes each, against 165 for a
// Conn in the list), and brings one back into a Conn when an event comes
// for it (its end, mostly). What a TIME_WAIT connection loses there is what
// nothing shows for it: its owner (a timewait socket belongs to no process)
// and its history (Spans).

// twConn is a connection in TIME_WAIT in a timewait socket, compact: a
// Conn's ends laid out field by field (ends itself would pad to 72 bytes
// here, not 64).
type twConn struct {
	since, sinceEarliest uint64
	local, remote        [16]byte
	lport, rport         uint16
	netns                uint32
	family               tracer.Family
	v4                   uint8 // as ends.v4
	sinceStart           bool
	seq                  uint32 // which compaction of the cookie (twOrder)
}

// fill makes c the connection w keeps.
func (w *twConn) fill(c *Conn, cookie uint64) {
	*c = Conn{Cookie: cookie, spans: c.truncSpans(), State: tracer.TimeWait, Timewait: true,
		Since: w.since, SinceEarliest: w.sinceEarliest, SinceStart: w.sinceStart}
	c.ends = ends{local: w.local, remote: w.remote, lport: w.lport, rport: w.rport, netns: w.netns, family: w.family, v4: w.v4}
}

// twKey is one entry of twOrder: which compaction of which cookie.
type twKey struct {
	cookie uint64
	seq    uint32
}

// compact moves c, in TIME_WAIT in a timewait socket, to the second tier
// (with Options.CompactTimewait; otherwise it stays as it is).
func (t *Timeline) compact(c *Conn) {
	if !t.opts.CompactTimewait || c.State != tracer.TimeWait || !c.Timewait {
		return
	}
	w := twConn{since: c.Since, sinceEarliest: c.SinceEarliest, sinceStart: c.SinceStart, family: c.ends.family,
		netns: c.ends.netns, local: c.ends.local, remote: c.ends.remote, lport: c.ends.lport, rport: c.ends.rport, v4: c.ends.v4}
	t.twSeq++
	w.seq = t.twSeq
	// Out of the list (not an end: a walk under way must not take it for
	// one), into the map.
	t.unlink(c)
	delete(t.conns, c.Cookie)
	delete(t.lingering, c.Cookie)
	t.tw[c.Cookie] = w
	t.twOrder = append(t.twOrder, twKey{c.Cookie, w.seq})
	t.recycle(c)
	// twOrder keeps an entry per compaction, ended or not: rebuilt when
	// most of it is ended ones, so that it stays within twice the map.
	if n := len(t.twOrder) - t.twHead; n > 2*len(t.tw)+1024 {
		kept := t.twOrder[:0]
		for _, k := range t.twOrder[t.twHead:] {
			if w, ok := t.tw[k.cookie]; ok && w.seq == k.seq {
				kept = append(kept, k)
			}
		}
		clear(t.twOrder[len(kept):])
		t.twOrder, t.twHead = kept, 0
	}
}

// expand brings the connection with cookie back from the second tier into
// the list, as the most recent; nil when the tier does not have it.
func (t *Timeline) expand(cookie uint64) *Conn {
	w, ok := t.tw[cookie]
	if !ok {
		return nil
	}
	delete(t.tw, cookie)
	c := t.newConn(cookie)
	prev, next := c.prev, c.next // (fill makes a whole Conn: not its place in the list)
	w.fill(c, cookie)
	c.prev, c.next = prev, next
	return c
}

// evictTimewait drops the connection that entered the second tier first,
// if any (a full table drops TIME_WAIT before anything else: it ends by
// itself, and a view needs it least).
func (t *Timeline) evictTimewait() bool {
	for t.twHead < len(t.twOrder) {
		k := t.twOrder[t.twHead]
		t.twOrder[t.twHead] = twKey{}
		t.twHead++
		if w, ok := t.tw[k.cookie]; ok && w.seq == k.seq {
			delete(t.tw, k.cookie)
			return true
		}
	}
	t.twOrder, t.twHead = t.twOrder[:0], 0
	return false
}
