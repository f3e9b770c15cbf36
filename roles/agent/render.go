package agent

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
)

const header = "    PID    PPID   UID  START     COMMAND\n"

func (v View) row(prefix string, mark string) string {
	start := "-"
	if v.StartTime != 0 {
		start = time.Unix(0, v.StartTime).Local().Format("15:04:05")
	}
	state := ""
	switch {
	case v.Exit != nil && v.Exit.Signal != 0:
		state = fmt.Sprintf("  (killed by signal %d)", v.Exit.Signal)
	case v.Exit != nil:
		state = fmt.Sprintf("  (exited %d)", v.Exit.Code)
	case !v.Alive():
		state = "  (gone)"
	}
	return fmt.Sprintf("%7d %7d %5d  %-8s  %s%s%s%s\n", v.Key.PID, v.Parent.PID, v.Exec.UID, start, prefix, v.Command(), state, mark)
}

// WriteTree prints processes as a forest, children under their parents.
func WriteTree(w io.Writer, vs []View) error {
	byKey := make(map[capture.ProcKey]View, len(vs))
	children := map[capture.ProcKey][]View{}
	for _, v := range vs {
		byKey[v.Key] = v
	}
	var roots []View
	for _, v := range vs {
		if _, ok := byKey[v.Parent]; ok && v.Parent != v.Key {
			children[v.Parent] = append(children[v.Parent], v)
		} else {
			roots = append(roots, v)
		}
	}
	order := func(s []View) {
		sort.Slice(s, func(i, j int) bool {
			if s[i].Key.Start != s[j].Key.Start {
				return s[i].Key.Start < s[j].Key.Start
			}
			return s[i].Key.PID < s[j].Key.PID
		})
	}
	var b strings.Builder
	b.WriteString(header)
	var walk func(v View, indent string, last bool, top bool, depth int)
	walk = func(v View, indent string, last, top bool, depth int) {
		prefix, childIndent := "", ""
		if !top {
			prefix = indent + "├─ "
			childIndent = indent + "│  "
			if last {
				prefix = indent + "└─ "
				childIndent = indent + "   "
			}
		}
		b.WriteString(v.row(prefix, ""))
		kids := children[v.Key]
		order(kids)
		if depth > 512 {
			return // a corrupt table must not recurse forever
		}
		for i, c := range kids {
			walk(c, childIndent, i == len(kids)-1, false, depth+1)
		}
	}
	order(roots)
	for _, r := range roots {
		walk(r, "", true, true, 0)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteLineage prints the chain from the oldest ancestor down to the target,
// then the target's descendants as a tree, marking the target.
func WriteLineage(w io.Writer, l Lineage) error {
	var b strings.Builder
	b.WriteString(header)
	indent := ""
	for i, a := range l.Ancestors {
		prefix := ""
		if i > 0 {
			prefix = indent + "└─ "
			indent += "   "
		}
		b.WriteString(a.row(prefix, ""))
	}
	prefix := ""
	if len(l.Ancestors) > 0 {
		prefix = indent + "└─ "
		indent += "   "
	}
	b.WriteString(l.Target.row(prefix, "   <== "+l.Target.Key.String()))
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if len(l.Descendants) == 0 {
		return nil
	}
	// Reuse the forest printer for the subtree, shifted under the target.
	var sub strings.Builder
	withTarget := append([]View{l.Target}, l.Descendants...)
	if err := WriteTree(&sub, withTarget); err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSuffix(sub.String(), "\n"), "\n")
	for _, line := range lines[2:] { // skip the header and the target itself
		cols := line[:len("    PID    PPID   UID  START     ")]
		rest := line[len(cols):]
		if _, err := fmt.Fprintf(w, "%s%s%s\n", cols, indent, rest); err != nil {
			return err
		}
	}
	return nil
}
