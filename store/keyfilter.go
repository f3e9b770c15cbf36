package store

import (
	"math/bits"

	"github.com/evilbitlabs/daemoneye/capture"
)

// keyFilter is a Bloom filter over every process key in the table, so that
// Append can skip the Pebble read of a process the table has never held:
// an exec, exit or connect of a process whose fork the agent did not see
// (started before the agent, or lost), or a fork out of start order, which
// newKeys's ceiling cannot rule out. Without it such a lookup searched every
// L0 file and level (Pebble's own filters need a table opened per file),
// and that was a third of Append on a workload of scattered processes.
//
// It holds every key in the table when the store opened plus every key
// written since. Keys deleted by retention stay in it: they only cost a
// read that finds nothing. It grows as a list of filters, each twice the
// capacity of the last, at about 1% false positives each; past
// keyFilterMaxKeys it stops taking keys and, no longer knowing them all,
// answers "maybe" for every key. Guarded by Local.wmu.
type keyFilter struct {
	parts    []bloomPart
	complete bool // every key of the table was added
	total    int  // capacity of all parts
}

const (
	keyFilterFirst   = 1 << 16 // keys in the first part
	keyFilterMaxKeys = 8 << 20 // about 10 MiB of filters
	bloomBitsPerKey  = 10
	bloomHashes      = 7
)

type bloomPart struct {
	bits []uint64
	n    int // keys added
	cap  int
}

func newKeyFilter(expect int) *keyFilter {
	f := &keyFilter{complete: true}
	f.grow(max(keyFilterFirst, 2*expect))
	return f
}

func (f *keyFilter) grow(capacity int) {
	if f.total+capacity > keyFilterMaxKeys {
		f.complete = false
		f.parts = nil // answers are "maybe" from now on: free the memory
		return
	}
	words := (capacity*bloomBitsPerKey + 63) / 64
	f.parts = append(f.parts, bloomPart{bits: make([]uint64, words), cap: capacity})
	f.total += capacity
}

// keyHash mixes a process key into 64 bits (splitmix64's finalizer).
func keyHash(k capture.ProcKey) uint64 {
	h := k.Start*0x9e3779b97f4a7c15 ^ uint64(k.PID)
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// probe returns the i-th bit position of hash h (double hashing).
func (b *bloomPart) probe(h uint64, i uint64) (word int, mask uint64) {
	p := (h + i*(bits.RotateLeft64(h, 32)|1)) % uint64(len(b.bits)*64)
	return int(p / 64), 1 << (p % 64)
}

func (b *bloomPart) set(h uint64) {
	for i := uint64(0); i < bloomHashes; i++ {
		w, m := b.probe(h, i)
		b.bits[w] |= m
	}
	b.n++
}

func (b *bloomPart) has(h uint64) bool {
	for i := uint64(0); i < bloomHashes; i++ {
		if w, m := b.probe(h, i); b.bits[w]&m == 0 {
			return false
		}
	}
	return true
}

func (f *keyFilter) add(k capture.ProcKey) {
	if !f.complete {
		return
	}
	last := &f.parts[len(f.parts)-1]
	if last.n >= last.cap {
		f.grow(2 * last.cap)
		if !f.complete {
			return
		}
		last = &f.parts[len(f.parts)-1]
	}
	last.set(keyHash(k))
}

// absent reports whether k is certainly not in the table.
func (f *keyFilter) absent(k capture.ProcKey) bool {
	if !f.complete {
		return false
	}
	h := keyHash(k)
	for i := range f.parts {
		if f.parts[i].has(h) {
			return false
		}
	}
	return true
}
