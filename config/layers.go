package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment variable that sets a value:
// agent.stream.batch_max_events is DAEMONEYE_AGENT_STREAM_BATCH_MAX_EVENTS.
const EnvPrefix = "DAEMONEYE_"

// Layer names where a value came from, lowest precedence first.
type Layer string

const (
	LayerDefault Layer = "default"
	LayerFile    Layer = "file"
	LayerEnv     Layer = "env"
	LayerFlag    Layer = "flag"
)

// Origin says which layer set a value, and where in it.
type Origin struct {
	Layer Layer
	Where string // "agent.yaml:7", "DAEMONEYE_AGENT_CAPTURE", "--capture"
}

func (o Origin) String() string {
	if o.Where == "" {
		return string(o.Layer)
	}
	return fmt.Sprintf("%s (%s)", o.Layer, o.Where)
}

// Flag is a value given on the command line, by key.
type Flag struct {
	Key   string // dotted key, e.g. agent.capture
	Value string // YAML scalar or flow sequence
	Name  string // the flag as typed, e.g. --capture
}

// Sources is the input to Load.
type Sources struct {
	File    string        // path of the YAML file; empty for none
	Environ []string      // os.Environ() form; nil for none
	Flags   []Flag        // in order; later wins
	Base    func() Config // defaults; Default when nil
}

// Loaded is an effective configuration and where each value came from.
type Loaded struct {
	Config  Config
	Origins map[string]Origin // by dotted key
}

// ErrUnknownKey is wrapped by errors about keys the configuration does not have.
var ErrUnknownKey = errors.New("unknown configuration key")

// Load builds the effective configuration: defaults, then the file, then the
// environment, then flags. Unknown keys are errors that name the key and line.
func Load(src Sources) (*Loaded, error) {
	base := Default
	if src.Base != nil {
		base = src.Base
	}
	l := &Loaded{Config: base(), Origins: map[string]Origin{}}
	leaves := leafFields(reflect.ValueOf(&l.Config).Elem(), "")
	for _, lf := range leaves {
		l.Origins[lf.key] = Origin{Layer: LayerDefault}
	}
	if src.File != "" {
		data, err := os.ReadFile(src.File)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if err := l.applyYAML(src.File, data, leaves); err != nil {
			return nil, err
		}
	}
	if err := l.applyEnv(src.Environ, leaves); err != nil {
		return nil, err
	}
	for _, f := range src.Flags {
		lf, ok := findLeaf(leaves, f.Key)
		if !ok {
			return nil, fmt.Errorf("%s: %w %q", f.Name, ErrUnknownKey, f.Key)
		}
		if err := setScalar(lf.val, f.Value); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", f.Name, f.Key, err)
		}
		l.Origins[f.Key] = Origin{Layer: LayerFlag, Where: f.Name}
	}
	if err := l.Config.Validate(); err != nil {
		return nil, err
	}
	return l, nil
}

type leaf struct {
	key string
	val reflect.Value
}

func findLeaf(leaves []leaf, key string) (leaf, bool) {
	for _, lf := range leaves {
		if lf.key == key {
			return lf, true
		}
	}
	return leaf{}, false
}

// leafFields lists every settable value under v by dotted YAML key. Structs
// are descended into; everything else (scalars, lists, durations) is a leaf.
func leafFields(v reflect.Value, prefix string) []leaf {
	var out []leaf
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && !isScalarType(fv.Type()) {
			out = append(out, leafFields(fv, key)...)
			continue
		}
		out = append(out, leaf{key: key, val: fv})
	}
	return out
}

func isScalarType(t reflect.Type) bool {
	return t == reflect.TypeOf(time.Duration(0)) || t == reflect.TypeOf(ByteSize(0))
}

// applyYAML decodes a file into the configuration, key by key, so that each
// value's line is known and any key the configuration lacks is reported with
// its line.
func (l *Loaded) applyYAML(name string, data []byte, leaves []leaf) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: nothing set
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s:%d: only one YAML document is allowed", name, more.Line)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	byKey := make(map[string]leaf, len(leaves))
	prefixes := map[string]bool{}
	for _, lf := range leaves {
		byKey[lf.key] = lf
		parts := strings.Split(lf.key, ".")
		for i := 1; i < len(parts); i++ {
			prefixes[strings.Join(parts[:i], ".")] = true
		}
	}
	var walk func(n *yaml.Node, prefix string) error
	walk = func(n *yaml.Node, prefix string) error {
		if n.Kind != yaml.MappingNode {
			where := "the top level"
			if prefix != "" {
				where = strconv.Quote(prefix)
			}
			return fmt.Errorf("%s:%d: %s must be a mapping", name, n.Line, where)
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := k.Value
			if prefix != "" {
				key = prefix + "." + k.Value
			}
			if seen[k.Value] {
				return fmt.Errorf("%s:%d: duplicate key %q", name, k.Line, key)
			}
			seen[k.Value] = true
			if lf, ok := byKey[key]; ok {
				if err := v.Decode(lf.val.Addr().Interface()); err != nil {
					return fmt.Errorf("%s:%d: %s: %w", name, v.Line, key, cleanYAMLErr(err))
				}
				l.Origins[key] = Origin{Layer: LayerFile, Where: fmt.Sprintf("%s:%d", name, k.Line)}
				continue
			}
			if prefixes[key] {
				if err := walk(v, key); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("%s:%d: %w %q", name, k.Line, ErrUnknownKey, key)
		}
		return nil
	}
	return walk(doc.Content[0], "")
}

func (l *Loaded) applyEnv(environ []string, leaves []leaf) error {
	env := map[string]string{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	for _, lf := range leaves {
		name := EnvName(lf.key)
		v, ok := env[name]
		if !ok {
			continue
		}
		if err := setScalar(lf.val, v); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		l.Origins[lf.key] = Origin{Layer: LayerEnv, Where: name}
	}
	return nil
}

// EnvName is the environment variable that sets key.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// setScalar parses s as YAML into v, so env and flags accept what the file does
// ("250ms", "[trace, bulk]", "true", "1GiB").
func setScalar(v reflect.Value, s string) error {
	fresh := reflect.New(v.Type())
	if err := yaml.Unmarshal([]byte(s), fresh.Interface()); err != nil {
		return cleanYAMLErr(err)
	}
	v.Set(fresh.Elem())
	return nil
}

func cleanYAMLErr(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  ")
	return errors.New(strings.TrimPrefix(msg, "yaml: "))
}

// Keys lists every configuration key in a stable order.
func (l *Loaded) Keys() []string { return sortedKeys(l.Origins) }

// Value returns the effective value of key, rendered as YAML flow text.
func (l *Loaded) Value(key string) (string, bool) {
	leaves := leafFields(reflect.ValueOf(&l.Config).Elem(), "")
	lf, ok := findLeaf(leaves, key)
	if !ok {
		return "", false
	}
	return render(lf.val.Interface()), true
}

func render(v any) string {
	switch x := v.(type) {
	case time.Duration:
		return x.String()
	case ByteSize:
		return x.String()
	case []string:
		q := make([]string, len(x))
		for i, s := range x {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case string:
		return strconv.Quote(x)
	}
	return fmt.Sprint(v)
}

// Show writes the effective configuration with the origin of each value. A
// non-empty section limits it to keys under that prefix.
func (l *Loaded) Show(w io.Writer, section string) error {
	leaves := leafFields(reflect.ValueOf(&l.Config).Elem(), "")
	width := 0
	var rows [][3]string
	for _, lf := range leaves {
		if section != "" && !strings.HasPrefix(lf.key, section+".") {
			continue
		}
		val := render(lf.val.Interface())
		rows = append(rows, [3]string{lf.key, val, l.Origins[lf.key].String()})
		if n := len(lf.key) + 3 + len(val); n > width {
			width = n
		}
	}
	for _, r := range rows {
		line := r[0] + " = " + r[1]
		if _, err := fmt.Fprintf(w, "%-*s  # %s\n", width, line, r[2]); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
