// SPDX-License-Identifier: Apache-2.0

package output

import "github.com/tcpstate/tcpstate/tracer"

// Sink joins a filter and a renderer; it is what live tracing and replay both
// feed events into. It implements tracer.Sink.
type Sink struct {
	Filter   *tracer.Filter
	Renderer Renderer
	// LostOnly passes loss reports but no events (trace --timeline, watch).
	LostOnly bool

	Received uint64 // state events delivered to the sink
	Shown    uint64 // state events that passed the filter
	Lost     uint64 // events the kernel reported lost
}

// Event filters and renders e.
func (s *Sink) Event(e *tracer.Event) error {
	if e.Type == tracer.EventLost {
		s.Lost += e.Lost
		return s.Renderer.Render(e)
	}
	s.Received++
	if s.LostOnly || s.Filter != nil && !s.Filter.Match(e) {
		return nil
	}
	s.Shown++
	return s.Renderer.Render(e)
}

// Idle flushes the renderer.
func (s *Sink) Idle() error { return s.Renderer.Flush() }
