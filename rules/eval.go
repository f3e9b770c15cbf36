package rules

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// marks are per-event-table row ids, in eventTables order: a rule's cursor
// (the last id evaluated) or a run's upper bound.
type marks [3]int64

func (m marks) Map() map[string]int64 {
	out := make(map[string]int64, len(eventTables))
	for i, t := range eventTables {
		out[t] = m[i]
	}
	return out
}

func marksOf(m map[string]int64) marks {
	var out marks
	for i, t := range eventTables {
		out[i] = m[t]
	}
	return out
}

// compiled is a rule ready to run: its SQL with the incremental CTEs.
type compiled struct {
	Rule
	pack  string
	query string
}

func compile(pack string, r Rule) (*compiled, error) {
	q, err := shapeSQL(r.SQL)
	if err != nil {
		return nil, err
	}
	return &compiled{Rule: r, pack: pack, query: q}, nil
}

// match is one row of a rule's result.
type match struct {
	key     ProcessKey
	time    int64 // 0: the rule returned no time
	context map[string]any
}

// Required and special result columns.
const (
	colHost  = "host"
	colPID   = "pid"
	colStart = "start"
	colTime  = "time"
)

// resultColumns finds host, pid, start (required) and time (optional) in a
// rule's result columns, and refuses a result that names one twice.
func resultColumns(cols []string) (idx map[string]int, err error) {
	idx = map[string]int{}
	for i, c := range cols {
		lc := strings.ToLower(c)
		if _, dup := idx[lc]; dup {
			return nil, fmt.Errorf("the result has two columns named %q (alias one: AS other_name)", c)
		}
		idx[lc] = i
	}
	var missing []string
	for _, c := range []string{colHost, colPID, colStart} {
		if _, ok := idx[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the result lacks column(s) %s: a rule returns host, pid and start of the process it flags (have: %s)",
			strings.Join(missing, ", "), strings.Join(cols, ", "))
	}
	return idx, nil
}

// maxIDs reads the newest id of each event table.
func maxIDs(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (marks, error) {
	var m marks
	err := q.QueryRowContext(ctx, `SELECT
		coalesce((SELECT max(id) FROM process_events), 0),
		coalesce((SELECT max(id) FROM network_events), 0),
		coalesce((SELECT max(id) FROM file_events), 0)`).Scan(&m[0], &m[1], &m[2])
	return m, err
}

// evaluate runs the rule over the rows with since < id <= until of each
// event table. guarded: install the read-only authorizer around the
// statement (connections that can write). At most maxMatches rows are
// read; truncated says there were more.
func (c *compiled) evaluate(ctx context.Context, conn *sql.Conn, since, until marks, maxMatches int, guarded bool) (ms []match, truncated bool, err error) {
	args := make([]any, 0, 2*len(eventTables))
	for i, t := range eventTables {
		args = append(args, sql.Named("since_"+t, since[i]), sql.Named("until_"+t, until[i]))
	}
	var d *denial
	if guarded {
		var unguard func() error
		d, unguard, err = guard(conn)
		if err != nil {
			return nil, false, err
		}
		defer func() {
			if uerr := unguard(); uerr != nil && err == nil {
				err = fmt.Errorf("remove authorizer: %w", uerr)
			}
		}()
	}
	rows, err := conn.QueryContext(ctx, c.query, args...)
	if err != nil {
		return nil, false, explain(ctx, d, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, false, explain(ctx, d, err)
	}
	idx, err := resultColumns(cols)
	if err != nil {
		return nil, false, err
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if len(ms) == maxMatches {
			truncated = true
			break
		}
		clear(vals)
		if err := rows.Scan(ptrs...); err != nil {
			return nil, false, explain(ctx, d, err)
		}
		m, ok := toMatch(cols, idx, vals)
		if ok {
			ms = append(ms, m)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, explain(ctx, d, err)
	}
	return ms, truncated, nil
}

// toMatch converts a row; ok is false for a row whose host, pid or start
// is NULL or not of the right type (a LEFT JOIN that found nothing).
func toMatch(cols []string, idx map[string]int, vals []any) (match, bool) {
	var m match
	switch h := vals[idx[colHost]].(type) {
	case string:
		m.key.Host = h
	case []byte:
		m.key.Host = string(h)
	default:
		return m, false
	}
	pid, ok1 := vals[idx[colPID]].(int64)
	start, ok2 := vals[idx[colStart]].(int64)
	if !ok1 || !ok2 || pid < 0 || pid > 1<<32-1 {
		return m, false
	}
	m.key.PID, m.key.Start = uint32(pid), uint64(start)
	if i, ok := idx[colTime]; ok {
		if t, ok := vals[i].(int64); ok {
			m.time = t
		}
	}
	for i, c := range cols {
		switch strings.ToLower(c) {
		case colHost, colPID, colStart, colTime:
			continue
		}
		if m.context == nil {
			m.context = map[string]any{}
		}
		switch v := vals[i].(type) {
		case []byte:
			m.context[c] = string(v)
		case float64:
			if math.IsNaN(v) || math.IsInf(v, 0) {
				m.context[c] = strconv.FormatFloat(v, 'g', -1, 64) // JSON has no NaN
			} else {
				m.context[c] = v
			}
		default:
			m.context[c] = v
		}
	}
	return m, true
}

// explain turns a statement error into what a rule author needs: what the
// authorizer refused, a timeout, or SQLite's message.
func explain(ctx context.Context, d *denial, err error) error {
	if d != nil {
		if what := d.get(); what != "" {
			return fmt.Errorf("%w: %s refused", ErrNotReadOnly, what)
		}
	}
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return fmt.Errorf("%w: %w", ErrTimeout, err)
		}
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// ErrTimeout is wrapped when a rule ran past its time limit.
var ErrTimeout = errors.New("rule ran past its time limit")
