package rules

import "context"

// SetPacks replaces the engine's rules with those of packs while it runs
// (a rule pack pushed down the tree, or reloaded at the center), between
// two passes. A rule whose id and SQL are unchanged keeps its cursors and
// counters (it is not run again over rows it has seen) and takes the new
// title, severity and action; a new or changed rule starts as in a new
// engine, from the recorder's cursors for its id. A rule disabled after
// failures is enabled again: new packs are a fresh start. On error (rule
// ids not unique across the packs) the engine keeps its rules.
func (e *Engine) SetPacks(ctx context.Context, packs ...*Pack) error {
	next, err := e.build(ctx, packs)
	if err != nil {
		return err
	}
	e.runMu.Lock() // between passes
	defer e.runMu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	old := make(map[string]*ruleState, len(e.rules))
	for _, rs := range e.rules {
		old[rs.c.ID] = rs
	}
	for _, rs := range next {
		o, ok := old[rs.c.ID]
		if !ok || o.c.query != rs.c.query || rs.st.Disabled {
			continue
		}
		rs.cur, rs.loaded = o.cur, o.loaded
		st := o.st
		st.Pack, st.Disabled, st.Consecutive, st.LastError = rs.st.Pack, false, 0, ""
		rs.st = st
	}
	e.rules = next
	return nil
}

// SetPacks replaces the agent rules the window runs (see Engine.SetPacks).
func (a *AgentEngine) SetPacks(ctx context.Context, packs ...*Pack) error {
	return a.eng.SetPacks(ctx, packs...)
}
