package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/evilbitlabs/daemoneye/capture"
)

// Bounds of the lineage walks. Real trees are far shallower; the bounds are
// what a corrupt or hostile table (a parent cycle, a fork bomb) costs at most.
const (
	MaxAncestors      = 1024
	DefaultDepth      = 64
	MaxDepth          = 1024
	MaxDescendantRows = 1 << 16
)

// Process is a processes row: one incarnation of a process on a host.
type Process struct {
	Host string
	capture.Process
	// Depth is the distance from the process a lineage query started at:
	// 1 for its parent (Ancestors) or its children (Descendants).
	Depth int
}

// Process returns the row for (host, pid, start).
func (s *Store) Process(ctx context.Context, host string, pid uint32, start uint64) (Process, bool, error) {
	row := s.reads.process.QueryRowContext(ctx, host, int64(pid), int64(start))
	h, p, err := scanProc(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Process{}, false, nil
	}
	if err != nil {
		return Process{}, false, fmt.Errorf("sqlstore: process %s/%d@%d: %w", host, pid, start, err)
	}
	cp, err := p.process()
	if err != nil {
		return Process{}, false, fmt.Errorf("sqlstore: %w", err)
	}
	return Process{Host: h, Process: cp}, true, nil
}

// CROSS JOIN pins the join order (SQLite's documented planner override): the
// walk must drive from the CTE into the indexes. Without it, and without
// statistics on a young database, the planner chose to scan all of a
// host's processes per step.
//
// The walks carry the path of keys visited as text so that a cycle ends the
// branch (instr on the path), not only the depth bound. Keys are wrapped in
// '/' so that pid 1 does not match inside pid 11.
var ancestorsSQL = `
WITH RECURSIVE anc (pid, start, depth, path) AS (
	SELECT ppid, pstart, 1, '/' || pid || '@' || start || '/' || ppid || '@' || pstart || '/'
	FROM processes WHERE host = ?1 AND pid = ?2 AND start = ?3 AND ppid IS NOT NULL
	  AND NOT (ppid = pid AND pstart = start)
	UNION ALL
	SELECT p.ppid, p.pstart, anc.depth + 1, anc.path || p.ppid || '@' || p.pstart || '/'
	FROM anc CROSS JOIN processes p ON p.host = ?1 AND p.pid = anc.pid AND p.start = anc.start
	WHERE p.ppid IS NOT NULL AND anc.depth < ?4
	  AND instr(anc.path, '/' || p.ppid || '@' || p.pstart || '/') = 0
)
SELECT ` + procColsQualified + `, anc.depth
FROM anc CROSS JOIN processes p ON p.host = ?1 AND p.pid = anc.pid AND p.start = anc.start
ORDER BY anc.depth`

var descendantsSQL = `
WITH RECURSIVE d (pid, start, depth, path) AS (
	SELECT ?2, ?3, 0, '/' || ?2 || '@' || ?3 || '/'
	UNION ALL
	SELECT c.pid, c.start, d.depth + 1, d.path || c.pid || '@' || c.start || '/'
	FROM d CROSS JOIN processes c ON c.host = ?1 AND c.ppid = d.pid AND c.pstart = d.start
	WHERE d.depth < ?4 AND instr(d.path, '/' || c.pid || '@' || c.start || '/') = 0
	LIMIT ?5
)
SELECT ` + procColsQualified + `, d.depth
FROM d CROSS JOIN processes p ON p.host = ?1 AND p.pid = d.pid AND p.start = d.start
WHERE d.depth > 0
ORDER BY d.depth, p.pid, p.start`

var procColsQualified = qualify("p", procCols)

// Ancestors returns the parent chain of (host, pid, start), nearest first,
// up to the first parent the table does not know, at most MaxAncestors
// long. A cycle in the parent links ends the chain.
func (s *Store) Ancestors(ctx context.Context, host string, pid uint32, start uint64) ([]Process, error) {
	out, err := s.lineage(ctx, s.reads.ancestors, host, int64(pid), int64(start), MaxAncestors)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: ancestors of %s/%d@%d: %w", host, pid, start, err)
	}
	return out, nil
}

// Descendants returns the processes below (host, pid, start), at most
// maxDepth generations down (<= 0 means DefaultDepth, capped at MaxDepth),
// generation by generation in (pid, start) order, at most
// MaxDescendantRows of them. Incarnations are kept apart: the children of
// pid 100 started at tick 5 are not those of pid 100 started at tick 900.
func (s *Store) Descendants(ctx context.Context, host string, pid uint32, start uint64, maxDepth int) ([]Process, error) {
	if maxDepth <= 0 {
		maxDepth = DefaultDepth
	}
	maxDepth = min(maxDepth, MaxDepth)
	// The CTE's LIMIT counts the seed row too.
	out, err := s.lineage(ctx, s.reads.descendants, host, int64(pid), int64(start), maxDepth, MaxDescendantRows+1)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: descendants of %s/%d@%d: %w", host, pid, start, err)
	}
	return out, nil
}

func (s *Store) lineage(ctx context.Context, q *sql.Stmt, args ...any) ([]Process, error) {
	rows, err := q.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Process
	for rows.Next() {
		var depth int
		h, p, err := scanProc(scanPlus{rows, &depth})
		if err != nil {
			return nil, err
		}
		cp, err := p.process()
		if err != nil {
			return nil, err
		}
		out = append(out, Process{Host: h, Process: cp, Depth: depth})
	}
	return out, rows.Err()
}

// scanPlus scans procCols followed by extra destinations.
type scanPlus struct {
	rows  *sql.Rows
	extra *int
}

func (s scanPlus) Scan(dst ...any) error { return s.rows.Scan(append(dst, s.extra)...) }

// readStmts are prepared on the read-only pool; database/sql prepares each
// once per connection, so a lineage query does not compile its CTE (and run
// the authorizer) every time.
type readStmts struct {
	process, ancestors, descendants *sql.Stmt
}

func (r *readStmts) prepare(ctx context.Context, db *sql.DB) error {
	for _, p := range []struct {
		dst **sql.Stmt
		sql string
	}{
		{&r.process, `SELECT ` + procCols + ` FROM processes WHERE host = ? AND pid = ? AND start = ?`},
		{&r.ancestors, ancestorsSQL},
		{&r.descendants, descendantsSQL},
	} {
		st, err := db.PrepareContext(ctx, p.sql)
		if err != nil {
			r.close()
			return fmt.Errorf("prepare: %w", err)
		}
		*p.dst = st
	}
	return nil
}

func (r *readStmts) close() {
	for _, st := range []*sql.Stmt{r.process, r.ancestors, r.descendants} {
		if st != nil {
			st.Close()
		}
	}
}
