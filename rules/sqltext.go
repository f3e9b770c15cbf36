package rules

import (
	"errors"
	"fmt"
	"strings"
)

// The incremental views. A rule reads new rows through them; the engine
// defines them as common table expressions in front of the rule's SQL,
// bounded by the rule's cursor and a snapshot of the newest id:
//
//	new_process_events AS (SELECT * FROM process_events
//	    WHERE id > :since_process_events AND id <= :until_process_events)
//
// and the same for network_events and file_events. They are CTEs, not
// views, because the center's read-only connections refuse CREATE (even
// TEMP VIEW), and a CTE costs nothing when a rule does not use it.
var eventTables = []string{"process_events", "network_events", "file_events"}

// Parameters a rule may name: since_T (the last id of table T this rule has
// already evaluated) and until_T (the newest id of this run).
var ruleParams = func() map[string]bool {
	m := map[string]bool{}
	for _, t := range eventTables {
		m["since_"+t] = true
		m["until_"+t] = true
	}
	return m
}()

func cteList() string {
	var b strings.Builder
	for i, t := range eventTables {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "new_%s AS (SELECT * FROM %s WHERE id > :since_%s AND id <= :until_%s)", t, t, t, t)
	}
	return b.String()
}

var incrementalCTEs = cteList()

// token kinds of the small SQL lexer.
type tokKind int

const (
	tokWord   tokKind = iota // identifier or keyword
	tokString                // '...'
	tokQuoted                // "...", `...` or [...]
	tokParam                 // ?, ?NNN, :name, @name, $name
	tokNumber
	tokSemi
	tokOther // operators and punctuation
)

type token struct {
	kind tokKind
	text string
	pos  int // byte offset in the source
}

// lex splits SQL into tokens following SQLite's lexical rules for what
// matters here: strings and quoted identifiers hide everything, comments
// are dropped. Unterminated quotes and comments are errors (SQLite would
// refuse them too, but a clear message is better).
func lex(q string) ([]token, error) {
	var toks []token
	isWord := func(c byte) bool {
		return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80 || c == '$'
	}
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			if j := strings.IndexByte(q[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(q)
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			j := strings.Index(q[i+2:], "*/")
			if j < 0 {
				return nil, fmt.Errorf("unterminated /* comment at %s", where(q, i))
			}
			i += j + 4
		case c == '\'' || c == '"' || c == '`' || c == '[':
			end := c
			if c == '[' {
				end = ']'
			}
			j, ok := closeQuote(q, i, end)
			if !ok {
				return nil, fmt.Errorf("unterminated %c at %s", c, where(q, i))
			}
			k := tokQuoted
			if c == '\'' {
				k = tokString
			}
			toks = append(toks, token{k, q[i:j], i})
			i = j
		case c == ';':
			toks = append(toks, token{tokSemi, ";", i})
			i++
		case c == '?' || c == ':' || c == '@' || (c == '$' && i+1 < len(q) && isWord(q[i+1])):
			j := i + 1
			for j < len(q) && (isWord(q[j]) || q[j] == ':' && c == '$') {
				j++
			}
			if c == ':' && j == i+1 {
				toks = append(toks, token{tokOther, ":", i})
				i++
				continue
			}
			toks = append(toks, token{tokParam, q[i:j], i})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9':
			j := i + 1
			for j < len(q) && (isWord(q[j]) || q[j] == '.') {
				j++
			}
			toks = append(toks, token{tokNumber, q[i:j], i})
			i = j
		case isWord(c):
			j := i + 1
			for j < len(q) && isWord(q[j]) {
				j++
			}
			toks = append(toks, token{tokWord, q[i:j], i})
			i = j
		default:
			toks = append(toks, token{tokOther, q[i : i+1], i})
			i++
		}
	}
	return toks, nil
}

// closeQuote returns the index after the quote closing the one at i. A
// doubled closing quote is an escaped one (not inside [...]).
func closeQuote(q string, i int, end byte) (int, bool) {
	for j := i + 1; j < len(q); j++ {
		if q[j] == end {
			if end != ']' && j+1 < len(q) && q[j+1] == end {
				j++
				continue
			}
			return j + 1, true
		}
	}
	return len(q), false
}

// where names a byte offset as line:column of q (1-based).
func where(q string, off int) string {
	line := 1 + strings.Count(q[:off], "\n")
	col := off - strings.LastIndexByte(q[:off], '\n')
	return fmt.Sprintf("sql line %d col %d", line, col)
}

// errNotSelect is wrapped by statement-shape refusals.
var errNotSelect = errors.New("not a single read-only SELECT")

// shapeSQL checks what can be checked of a rule's SQL without a database,
// and returns the SQL the engine runs: the rule's statement with the
// incremental CTEs in front. The checks: exactly one statement; it starts
// with SELECT or WITH; parameters are only the since_/until_ ones; no
// double-quoted identifiers (SQLite reads an unknown "name" as a string,
// which would hide a misspelt column); and it reads at least one new_*
// view, since a rule that reads only whole tables would rescan everything
// on every run.
func shapeSQL(q string) (string, error) {
	if strings.IndexByte(q, 0) >= 0 {
		return "", fmt.Errorf("%w: the sql contains a NUL byte", errNotSelect)
	}
	toks, err := lex(q)
	if err != nil {
		return "", err
	}
	// Drop trailing semicolons; any other ';' separates statements.
	for len(toks) > 0 && toks[len(toks)-1].kind == tokSemi {
		toks = toks[:len(toks)-1]
	}
	if len(toks) == 0 {
		return "", fmt.Errorf("%w: the sql is empty", errNotSelect)
	}
	for _, t := range toks {
		if t.kind == tokSemi {
			return "", fmt.Errorf("%w: more than one statement (';' at %s)", errNotSelect, where(q, t.pos))
		}
	}
	first := strings.ToUpper(toks[0].text)
	if toks[0].kind != tokWord || first != "SELECT" && first != "WITH" {
		return "", fmt.Errorf("%w: a rule is a SELECT or WITH ... SELECT, not %s", errNotSelect, toks[0].text)
	}
	usesNew := false
	for _, t := range toks {
		switch t.kind {
		case tokParam:
			name := t.text[1:]
			if t.text[0] == '?' || !ruleParams[name] {
				return "", fmt.Errorf("parameter %s at %s: a rule may only use :since_T and :until_T for T in %s",
					t.text, where(q, t.pos), strings.Join(eventTables, ", "))
			}
		case tokQuoted:
			if t.text[0] == '"' {
				return "", fmt.Errorf("%s at %s: double quotes are not allowed (use 'single quotes' for a string; "+
					"SQLite would read an unknown \"identifier\" as a string and hide a misspelt column)", t.text, where(q, t.pos))
			}
		case tokWord:
			for _, et := range eventTables {
				if strings.EqualFold(t.text, "new_"+et) {
					usesNew = true
				}
			}
		}
	}
	if !usesNew {
		return "", fmt.Errorf("the rule reads none of new_process_events, new_network_events, new_file_events: " +
			"it must select from one of them to run incrementally (see the package documentation)")
	}
	end := toks[len(toks)-1]
	body := q[:end.pos+len(end.text)]
	if first == "SELECT" {
		return "WITH " + incrementalCTEs + "\n" + body, nil
	}
	// WITH [RECURSIVE] cte, ...: ours go first in the same list, so the
	// rule's CTEs can read them.
	at := toks[0].pos + len(toks[0].text)
	if len(toks) > 1 && toks[1].kind == tokWord && strings.EqualFold(toks[1].text, "RECURSIVE") {
		at = toks[1].pos + len(toks[1].text)
	}
	return body[:at] + " " + incrementalCTEs + ",\n" + body[at:], nil
}
