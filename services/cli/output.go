package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v2"
)

// Output formats, as the openstack CLI names them (-f).
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
	formatValue = "value"
)

// outputOpts are the openstack CLI's formatter options: -f and -c.
type outputOpts struct {
	format  string
	columns []string
}

func addOutputFlags(cmd *cobra.Command, o *outputOpts) {
	cmd.Flags().StringVarP(&o.format, "format", "f", formatTable, "output format: table, json, yaml or value")
	cmd.Flags().StringArrayVarP(&o.columns, "column", "c", nil, "column to include (repeat for more); names are the API's JSON fields")
}

func (o *outputOpts) validate() error {
	switch o.format {
	case formatTable, formatJSON, formatYAML, formatValue:
		return nil
	}
	return fmt.Errorf("invalid output format %q: choose table, json, yaml or value", o.format)
}

// locationFields orders the fields of nested objects as the API does: a
// source's or destination's, a replication's retention and cycles.
var locationFields = []string{"region", "pool", "image", "snapshot", "volume_id", "backup_id",
	"keep_last", "keep_hourly", "keep_daily", "completed", "failed", "skipped"}

// object is one API object with its keys in display order. Values are what
// encoding/json decoded from the API's body, so -f json prints the API's
// object unchanged.
type object struct {
	keys   []string
	values map[string]any
}

// newObject orders raw's keys: first those of order that raw has, then the
// rest (fields a newer API added) sorted.
func newObject(raw map[string]any, order []string) object {
	o := object{values: raw}
	seen := make(map[string]bool, len(raw))
	for _, k := range order {
		if _, ok := raw[k]; ok {
			o.keys = append(o.keys, k)
			seen[k] = true
		}
	}
	var rest []string
	for k := range raw {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	o.keys = append(o.keys, rest...)
	return o
}

// pick keeps the columns asked for, in the order asked.
func (o object) pick(columns []string) object {
	if len(columns) == 0 {
		return o
	}
	return object{keys: columns, values: o.values}
}

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		v := o.values[k]
		if m, ok := v.(map[string]any); ok {
			v = newObject(m, locationFields)
		}
		vb, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (o object) yaml() yaml.MapSlice {
	m := make(yaml.MapSlice, 0, len(o.keys))
	for _, k := range o.keys {
		m = append(m, yaml.MapItem{Key: k, Value: yamlValue(o.values[k])})
	}
	return m
}

// yamlValue turns decoded JSON into YAML values with sorted nested keys and
// integral numbers printed as integers.
func yamlValue(v any) any {
	switch t := v.(type) {
	case map[string]any:
		return newObject(t, locationFields).yaml()
	case []any:
		out := make([]any, len(t))
		for i := range t {
			out[i] = yamlValue(t[i])
		}
		return out
	case float64:
		if t == float64(int64(t)) {
			return int64(t)
		}
		return t
	}
	return v
}

// checkColumns rejects a -c that names no field, as the openstack CLI does.
func checkColumns(columns []string, known []object, order []string) error {
	valid := map[string]bool{}
	for _, k := range order {
		valid[k] = true
	}
	for _, o := range known {
		for _, k := range o.keys {
			valid[k] = true
		}
	}
	for _, c := range columns {
		if !valid[c] {
			names := make([]string, 0, len(valid))
			for k := range valid {
				names = append(names, k)
			}
			sort.Strings(names)
			return fmt.Errorf("no column %q; columns are: %s", c, strings.Join(names, ", "))
		}
	}
	return nil
}

// printOne prints one object: a Field/Value table, the object, or its values
// one per line.
func printOne(w io.Writer, o outputOpts, obj object, order []string) error {
	if err := checkColumns(o.columns, []object{obj}, order); err != nil {
		return err
	}
	obj = obj.pick(o.columns)
	switch o.format {
	case formatJSON:
		return writeJSON(w, obj)
	case formatYAML:
		return writeYAML(w, obj.yaml())
	case formatValue:
		for _, k := range obj.keys {
			fmt.Fprintln(w, cell(obj.values[k]))
		}
		return nil
	}
	rows := make([][]string, 0, len(obj.keys))
	for _, k := range obj.keys {
		rows = append(rows, []string{k, cell(obj.values[k])})
	}
	writeTable(w, []string{"Field", "Value"}, rows)
	return nil
}

// printList prints objects with columns (defaults unless -c): a table, a list
// of objects, or one line of space-separated values per object.
func printList(w io.Writer, o outputOpts, objs []object, defaults, order []string) error {
	if err := checkColumns(o.columns, objs, order); err != nil {
		return err
	}
	cols := defaults
	if len(o.columns) > 0 {
		cols = o.columns
	}
	switch o.format {
	case formatJSON:
		out := make([]object, len(objs))
		for i := range objs {
			out[i] = objs[i].pick(cols)
		}
		return writeJSON(w, out)
	case formatYAML:
		out := make([]yaml.MapSlice, len(objs))
		for i := range objs {
			out[i] = objs[i].pick(cols).yaml()
		}
		return writeYAML(w, out)
	case formatValue:
		for _, obj := range objs {
			vals := make([]string, len(cols))
			for i, c := range cols {
				vals[i] = cell(obj.values[c])
			}
			fmt.Fprintln(w, strings.Join(vals, " "))
		}
		return nil
	}
	if len(objs) == 0 {
		return nil // the openstack CLI prints nothing for an empty list
	}
	rows := make([][]string, len(objs))
	for i, obj := range objs {
		rows[i] = make([]string, len(cols))
		for j, c := range cols {
			rows[i][j] = cell(obj.values[c])
		}
	}
	writeTable(w, cols, rows)
	return nil
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func writeYAML(w io.Writer, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// cell renders a value the way the openstack CLI's table does: null is None,
// an object is key='value' pairs, integral numbers have no decimals.
func cell(v any) string {
	switch t := v.(type) {
	case nil:
		return "None"
	case string:
		return t
	case bool:
		if t {
			return "True"
		}
		return "False"
	case float64:
		if t == float64(int64(t)) {
			return strconv.FormatInt(int64(t), 10)
		}
		return strconv.FormatFloat(t, 'f', -1, 64)
	case map[string]any:
		obj := newObject(t, locationFields)
		parts := make([]string, 0, len(obj.keys))
		for _, k := range obj.keys {
			if obj.values[k] == nil {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s='%s'", k, cell(obj.values[k])))
		}
		return strings.Join(parts, ", ")
	case []any:
		parts := make([]string, len(t))
		for i := range t {
			parts[i] = cell(t[i])
		}
		return strings.Join(parts, ", ")
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// writeTable draws the openstack CLI's (prettytable's) table. A cell with
// newlines spans several lines.
func writeTable(w io.Writer, header []string, rows [][]string) {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for i, c := range r {
			for _, line := range strings.Split(c, "\n") {
				widths[i] = max(widths[i], utf8.RuneCountInString(line))
			}
		}
	}
	var sep strings.Builder
	sep.WriteByte('+')
	for _, n := range widths {
		sep.WriteString(strings.Repeat("-", n+2))
		sep.WriteByte('+')
	}
	line := func(cells []string) {
		split := make([][]string, len(cells))
		height := 1
		for i, c := range cells {
			split[i] = strings.Split(c, "\n")
			height = max(height, len(split[i]))
		}
		for l := 0; l < height; l++ {
			var b strings.Builder
			b.WriteByte('|')
			for i := range cells {
				s := ""
				if l < len(split[i]) {
					s = split[i][l]
				}
				b.WriteByte(' ')
				b.WriteString(s)
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(s)+1))
				b.WriteByte('|')
			}
			fmt.Fprintln(w, b.String())
		}
	}
	fmt.Fprintln(w, sep.String())
	line(header)
	fmt.Fprintln(w, sep.String())
	for _, r := range rows {
		line(r)
	}
	fmt.Fprintln(w, sep.String())
}
