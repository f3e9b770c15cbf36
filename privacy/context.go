package privacy

import (
	"encoding/json"
	"strings"
)

// contextKeys are the keys of a rule's alert context that may hold command
// lines or environments: their values are masked wherever a context is
// shown or exported (a reveal of the process shows them).
var contextKeys = map[string]bool{"argv": true, "args": true, "cmdline": true, "command_line": true, "env": true, "environ": true}

// Context masks command-line-like values anywhere in an alert's context
// JSON; what is not a JSON object or array becomes {}.
func Context(s string) json.RawMessage {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return json.RawMessage(`{}`)
	}
	switch v.(type) {
	case map[string]any, []any:
	default:
		return json.RawMessage(`{}`)
	}
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if contextKeys[strings.ToLower(k)] {
					x[k] = Masked
				} else {
					x[k] = walk(e)
				}
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return v
	}
	b, err := json.Marshal(walk(v))
	if err != nil {
		return json.RawMessage(`{}`)
	}
	return b
}
