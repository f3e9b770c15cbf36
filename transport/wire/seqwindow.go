package wire

import (
	"fmt"
	"slices"
	"sort"
	"sync"
)

// SeqVerdict is what a SeqWindow knows about one (agent, seq).
type SeqVerdict uint8

const (
	// SeqNew: never seen; store it.
	SeqNew SeqVerdict = 1
	// SeqDuplicate: already seen; ack it again without storing.
	SeqDuplicate SeqVerdict = 2
	// SeqUnknown: too far below the window to tell from memory (the window
	// had to forget it); the caller decides from its store, then Marks.
	SeqUnknown SeqVerdict = 3
)

func (v SeqVerdict) String() string {
	switch v {
	case SeqNew:
		return "new"
	case SeqDuplicate:
		return "duplicate"
	case SeqUnknown:
		return "unknown"
	}
	return fmt.Sprintf("verdict(%d)", v)
}

// DefaultMaxSeqRanges bounds the out-of-order runs kept per agent.
const DefaultMaxSeqRanges = 1024

// SeqWindow is the center's exact dedup of (agent_id, seq). Per agent it
// keeps the seen seqs as a sorted set of disjoint runs: in order delivery
// keeps one run whose top is the high-water mark; batches arriving out of
// order (lanes overtake each other, proxies fail over, bulk is shed and
// never comes) add runs above it. The number of runs is bounded: when it
// overflows, the lowest run is forgotten and everything at or below it
// becomes SeqUnknown rather than being guessed, so the window never drops a
// batch it has not seen nor stores one twice. It is safe for concurrent use.
type SeqWindow struct {
	mu        sync.Mutex
	maxRanges int
	agents    map[string]*seqSet
}

type seqRange struct{ lo, hi uint64 } // inclusive

type seqSet struct {
	// floor: any seq below it that is not in runs was forgotten.
	floor uint64
	runs  []seqRange // sorted, disjoint, never adjacent
}

// NewSeqWindow returns an empty window keeping at most maxRanges runs per
// agent (<= 0: DefaultMaxSeqRanges).
func NewSeqWindow(maxRanges int) *SeqWindow {
	if maxRanges <= 0 {
		maxRanges = DefaultMaxSeqRanges
	}
	return &SeqWindow{maxRanges: maxRanges, agents: map[string]*seqSet{}}
}

// Check reports what the window knows about (agentID, seq) without
// changing it.
func (w *SeqWindow) Check(agentID string, seq uint64) SeqVerdict {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.agents[agentID].check(seq)
}

// Mark records (agentID, seq) as seen (call it once the batch is durable).
// Marking twice is harmless. Marking below the forgotten floor is a no-op:
// there the caller's store answers, and remembering it would evict newer
// runs.
func (w *SeqWindow) Mark(agentID string, seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.agents[agentID]
	if s == nil {
		s = &seqSet{}
		w.agents[agentID] = s
	}
	s.mark(seq, w.maxRanges)
}

// Observe checks (agentID, seq) and marks it if it is new, atomically, for
// receivers that do not need to wait for a durable write before marking.
// SeqUnknown is not marked.
func (w *SeqWindow) Observe(agentID string, seq uint64) SeqVerdict {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.agents[agentID]
	v := s.check(seq)
	if v == SeqNew {
		if s == nil {
			s = &seqSet{}
			w.agents[agentID] = s
		}
		s.mark(seq, w.maxRanges)
	}
	return v
}

// HighWater returns the top of the agent's first run (the highest seq up
// to which the window has no gap) and whether the agent is known.
func (w *SeqWindow) HighWater(agentID string) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.agents[agentID]
	if s == nil || len(s.runs) == 0 {
		return 0, false
	}
	return s.runs[0].hi, true
}

func (s *seqSet) find(seq uint64) (int, bool) {
	// first run whose hi >= seq
	i := sort.Search(len(s.runs), func(i int) bool { return s.runs[i].hi >= seq })
	return i, i < len(s.runs) && s.runs[i].lo <= seq
}

func (s *seqSet) check(seq uint64) SeqVerdict {
	if s == nil {
		return SeqNew
	}
	if _, ok := s.find(seq); ok {
		return SeqDuplicate
	}
	if seq < s.floor {
		return SeqUnknown
	}
	return SeqNew
}

func (s *seqSet) mark(seq uint64, maxRanges int) {
	i, ok := s.find(seq)
	if ok || seq < s.floor {
		return
	}
	// runs[i-1].hi < seq < runs[i].lo (when they exist)
	joinPrev := i > 0 && s.runs[i-1].hi+1 == seq
	joinNext := i < len(s.runs) && seq+1 == s.runs[i].lo
	switch {
	case joinPrev && joinNext:
		s.runs[i-1].hi = s.runs[i].hi
		s.runs = slices.Delete(s.runs, i, i+1)
	case joinPrev:
		s.runs[i-1].hi = seq
	case joinNext:
		s.runs[i].lo = seq
	default:
		s.runs = slices.Insert(s.runs, i, seqRange{seq, seq})
	}
	for len(s.runs) > maxRanges {
		s.floor = max(s.floor, s.runs[0].hi+1)
		if s.runs[0].hi == ^uint64(0) { // the whole space; keep it
			break
		}
		s.runs = slices.Delete(s.runs, 0, 1)
	}
}

// seqAgentState is the persisted form of one agent's set.
type seqAgentState struct {
	AgentID string   `cbor:"1,keyasint,omitempty"`
	Floor   uint64   `cbor:"2,keyasint,omitempty"`
	Runs    []uint64 `cbor:"3,keyasint,omitempty"` // lo0, hi0, lo1, hi1, ...
}

type seqWindowState struct {
	Version uint8           `cbor:"1,keyasint"`
	Agents  []seqAgentState `cbor:"2,keyasint,omitempty"` // sorted by AgentID
}

func (s *seqSet) state(agentID string) seqAgentState {
	st := seqAgentState{AgentID: agentID, Floor: s.floor, Runs: make([]uint64, 0, 2*len(s.runs))}
	for _, r := range s.runs {
		st.Runs = append(st.Runs, r.lo, r.hi)
	}
	return st
}

func setFromState(st seqAgentState, maxRanges int) (*seqSet, error) {
	if len(st.Runs)%2 != 0 {
		return nil, malformed("seq window: odd number of run bounds")
	}
	s := &seqSet{floor: st.Floor, runs: make([]seqRange, 0, len(st.Runs)/2)}
	for i := 0; i < len(st.Runs); i += 2 {
		r := seqRange{st.Runs[i], st.Runs[i+1]}
		if r.lo > r.hi {
			return nil, malformed("seq window: run %d..%d inverted", r.lo, r.hi)
		}
		if n := len(s.runs); n > 0 && s.runs[n-1].hi == ^uint64(0) || n > 0 && r.lo <= s.runs[n-1].hi+1 {
			return nil, malformed("seq window: runs overlap or out of order")
		}
		s.runs = append(s.runs, r)
	}
	for len(s.runs) > maxRanges {
		s.floor = max(s.floor, s.runs[0].hi+1)
		s.runs = s.runs[1:]
	}
	return s, nil
}

// Persist returns the whole window as bytes for the center's store.
func (w *SeqWindow) Persist() ([]byte, error) {
	w.mu.Lock()
	st := seqWindowState{Version: 1, Agents: make([]seqAgentState, 0, len(w.agents))}
	for id, s := range w.agents {
		st.Agents = append(st.Agents, s.state(id))
	}
	w.mu.Unlock()
	slices.SortFunc(st.Agents, func(a, b seqAgentState) int {
		switch {
		case a.AgentID < b.AgentID:
			return -1
		case a.AgentID > b.AgentID:
			return 1
		}
		return 0
	})
	b, err := encMode.Marshal(&st)
	if err != nil {
		return nil, fmt.Errorf("wire: persist seq window: %w", err)
	}
	return b, nil
}

// persistLimits bounds what Restore accepts: the store is ours, but a
// corrupted file must not take the center down.
func persistLimits(maxRanges int) Limits {
	return Limits{
		MaxArrayElements: max(1<<22, 2*maxRanges),
		MaxNestedLevels:  8,
	}
}

// Restore replaces the window's contents with a Persist result.
func (w *SeqWindow) Restore(b []byte) error {
	c, err := codecFor(persistLimits(w.maxRanges))
	if err != nil {
		return err
	}
	var st seqWindowState
	if err := c.strict.Unmarshal(b, &st); err != nil {
		return decodeErr("seq window", err)
	}
	if st.Version != 1 {
		return malformed("seq window: version %d", st.Version)
	}
	agents := make(map[string]*seqSet, len(st.Agents))
	for _, a := range st.Agents {
		if _, dup := agents[a.AgentID]; dup {
			return malformed("seq window: agent %q twice", a.AgentID)
		}
		s, err := setFromState(a, w.maxRanges)
		if err != nil {
			return err
		}
		agents[a.AgentID] = s
	}
	w.mu.Lock()
	w.agents = agents
	w.mu.Unlock()
	return nil
}

// PersistAgent returns one agent's state, small enough to write in the
// same transaction as the batch it just marked. Nil if the agent is unknown.
func (w *SeqWindow) PersistAgent(agentID string) ([]byte, error) {
	w.mu.Lock()
	s := w.agents[agentID]
	var st seqAgentState
	if s != nil {
		st = s.state("")
	}
	w.mu.Unlock()
	if s == nil {
		return nil, nil
	}
	b, err := encMode.Marshal(&st)
	if err != nil {
		return nil, fmt.Errorf("wire: persist seq window: %w", err)
	}
	return b, nil
}

// RestoreAgent replaces one agent's state with a PersistAgent result.
func (w *SeqWindow) RestoreAgent(agentID string, b []byte) error {
	c, err := codecFor(persistLimits(w.maxRanges))
	if err != nil {
		return err
	}
	var st seqAgentState
	if err := c.strict.Unmarshal(b, &st); err != nil {
		return decodeErr("seq window agent", err)
	}
	if st.AgentID != "" {
		return malformed("seq window agent: unexpected agent id")
	}
	s, err := setFromState(st, w.maxRanges)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.agents[agentID] = s
	w.mu.Unlock()
	return nil
}
