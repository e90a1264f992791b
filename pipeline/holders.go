// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"time"

	"github.com/tcpstate/tcpstate/tracer"
	"github.com/tcpstate/tcpstate/tracer/timeline"
)

// Looking for the holders of sockets named only after their listener: at
// most every holderEvery, those in their state holderMinAge or more (most
// sockets of a busy service leave CLOSE_WAIT sooner), holderMax at a time.
const (
	holderEvery  = 2 * time.Second
	holderMinAge = time.Second
	holderMax    = 512
)

// holderCheck names the processes holding the sockets watch lists or serve
// counts, where their owner is only inherited from their listener: a forked
// child, or (before Linux 6.3) a worker that accepted them, which never read
// or wrote them. Each socket is looked for once.
type holderCheck struct {
	find   func([]tracer.HolderQuery) []tracer.Task // tracer.FindHolders; nil: never
	states tracer.StateSet
	last   uint64
}

// run looks, if it is time, and names what it finds in tl.
func (h *holderCheck) run(tl *timeline.Timeline, now uint64) {
	if h.find == nil || now-h.last < uint64(holderEvery) {
		return
	}
	h.last = now
	qs, cookies := tl.HolderQueries(now, holderMinAge, h.states, holderMax)
	if len(qs) == 0 {
		return
	}
	for i, task := range h.find(qs) {
		tl.SetHolder(cookies[i], task)
	}
}
