// SPDX-License-Identifier: Apache-2.0

package pipeline

import (
	"errors"

	"github.com/tcpstate/tcpstate/tracer"
)

var errAsyncClosed = errors.New("pipeline: event after the end of the output")

// asyncBatch is how many events go over at once: one handover costs about
// what rendering a few events does, so it is paid once per batch.
const asyncBatch = 512

// asyncBuffers is how many batches exist: one filling, one rendering, and
// one spare so that neither side waits on a single handover.
const asyncBuffers = 3

// Async passes events to Next on a goroutine of its own, in batches and in
// order, so that a replay's rendering runs beside its reading and its
// timeline (on two cores, the replay takes the longer of the two instead of
// their sum). Events are copied: the sender may reuse e, as tracer.Sink
// allows. An error of Next stops the rendering and is returned by the next
// Event, Idle or Close; the events after it are dropped (and counted in
// Dropped), as a synchronous sink would never have been given them. Event
// after Close is an error.
//
// Idle and Close wait until Next has seen every event sent before them; Idle
// then calls Next.Idle on the caller's goroutine (Next is idle meanwhile).
// Nothing else may use Next until Close returns.
type Async struct {
	next  tracer.Sink
	batch []tracer.Event
	full  chan []tracer.Event // to the worker
	free  chan asyncDone      // back from it
	out   int                 // batches sent and not yet back
	err   error
	done  bool // closed
	// Dropped counts the events other than loss reports that were given to
	// Async and never reached Next, for an error: a count of what was
	// shown takes them off.
	Dropped uint64
}

type asyncDone struct {
	batch   []tracer.Event
	err     error
	dropped uint64
}

// NewAsync starts the goroutine that feeds next; Close stops it.
func NewAsync(next tracer.Sink) *Async {
	a := &Async{
		next:  next,
		batch: make([]tracer.Event, 0, asyncBatch),
		full:  make(chan []tracer.Event, asyncBuffers),
		free:  make(chan asyncDone, asyncBuffers),
	}
	go a.work(a.full, a.free)
	return a
}

// work runs on its own goroutine: it touches only its arguments and Next.
func (a *Async) work(full <-chan []tracer.Event, free chan<- asyncDone) {
	var err error
	for b := range full {
		i := 0
		for ; err == nil && i < len(b); i++ {
			err = a.next.Event(&b[i])
		}
		free <- asyncDone{batch: b[:0], err: err, dropped: dropped(b[i:])}
	}
}

// dropped counts the events of b a count of what was shown counted.
func dropped(b []tracer.Event) uint64 {
	var n uint64
	for i := range b {
		if b[i].Type != tracer.EventLost {
			n++
		}
	}
	return n
}

// Event copies e into the batch, and hands the batch over when it is full.
func (a *Async) Event(e *tracer.Event) error {
	if a.err != nil || a.done {
		if e.Type != tracer.EventLost {
			a.Dropped++
		}
		if a.err == nil {
			return errAsyncClosed
		}
		return a.err
	}
	a.batch = append(a.batch, *e)
	if len(a.batch) < asyncBatch {
		return nil
	}
	return a.send()
}

// send hands the batch over and takes another: a new one while fewer than
// asyncBuffers exist, else the first to come back.
func (a *Async) send() error {
	a.full <- a.batch
	a.out++
	if a.out < asyncBuffers {
		a.batch = make([]tracer.Event, 0, asyncBatch)
		return a.err
	}
	a.back()
	return a.err
}

// back waits for one batch to come back, and keeps it for filling.
func (a *Async) back() {
	d := <-a.free
	a.out--
	a.batch = d.batch
	a.Dropped += d.dropped
	if a.err == nil {
		a.err = d.err
	}
}

// wait sends what is batched and waits until the worker has it all done.
func (a *Async) wait() error {
	if a.done {
		return a.err
	}
	if len(a.batch) > 0 && a.err == nil {
		a.full <- a.batch
		a.out++
		a.batch = nil
	} else {
		a.Dropped += dropped(a.batch)
	}
	for a.out > 0 {
		a.back() // (the batch sent comes back among them)
	}
	a.batch = a.batch[:0]
	return a.err
}

// Idle passes on the end of a burst once Next has every event before it.
func (a *Async) Idle() error {
	if err := a.wait(); err != nil {
		return err
	}
	return a.next.Idle()
}

// Close waits for Next to see every event sent, and stops the goroutine.
// Next is the caller's again afterwards. It returns Next's first error.
func (a *Async) Close() error {
	if a.done {
		return a.err
	}
	err := a.wait()
	close(a.full)
	a.done = true
	return err
}
