package store

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/evilbitlabs/daemoneye/capture"
)

// maxUrgent bounds the urgent list: past it the list starts again from the
// newest seq, and a shipper falls back to reading them in seq order.
const maxUrgent = 1 << 16

// UrgentRef is a stored event that travels ahead of the baseline: one of a
// focused trace (TraceID set) or an agent alert.
type UrgentRef struct {
	Seq   uint64
	Alert bool // an agent alert; otherwise a trace event
}

// noteUrgent lists the urgent events among evs, stored as first.. (wmu
// held).
func (l *Local) noteUrgent(evs []capture.Event, first uint64) {
	l.urgentMu.Lock()
	defer l.urgentMu.Unlock()
	for i := range evs {
		alert := evs[i].Kind == capture.KindAlert
		if evs[i].TraceID == "" && !alert {
			continue
		}
		if len(l.urgent) >= maxUrgent {
			// Nobody is taking them (or far behind): start again above
			// everything stored, so the list stays exact above its floor.
			l.urgent, l.urgentFloor = nil, first+uint64(len(evs))-1
			return
		}
		l.urgent = append(l.urgent, UrgentRef{Seq: first + uint64(i), Alert: alert})
	}
}

// Urgent returns the trace and alert events stored since the store was
// opened, in seq order, and the floor below which the list says nothing:
// every urgent event with a seq above floor is listed (until ForgetUrgent
// drops it), so a shipper that has read everything up to floor in seq
// order can send these ahead of the baseline it has not read yet.
func (l *Local) Urgent() (floor uint64, refs []UrgentRef) {
	l.urgentMu.Lock()
	defer l.urgentMu.Unlock()
	return l.urgentFloor, append([]UrgentRef(nil), l.urgent...)
}

// ForgetUrgent drops the listed trace events with seq <= trace and alerts
// with seq <= alert (shipped).
func (l *Local) ForgetUrgent(trace, alert uint64) {
	l.urgentMu.Lock()
	defer l.urgentMu.Unlock()
	kept := l.urgent[:0]
	for _, u := range l.urgent {
		if (u.Alert && u.Seq > alert) || (!u.Alert && u.Seq > trace) {
			kept = append(kept, u)
		}
	}
	l.urgent = kept
}

// RawEventAt reads one stored event by seq, as RawEventsBySeq hands it;
// ok is false when there is none (never stored, or removed by retention).
func (l *Local) RawEventAt(seq uint64, fn func(RawEvent)) (ok bool, err error) {
	if err := l.enter(false); err != nil {
		return false, err
	}
	defer l.leave()
	v, closer, err := l.db.Get(eventKey(seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("event %d: %w", seq, err)
	}
	defer closer.Close()
	ev, err := rawEvent(seq, v)
	if err != nil {
		return false, err
	}
	fn(ev)
	return true, nil
}
