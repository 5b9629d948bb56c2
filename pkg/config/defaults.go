package config

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"
)

// DefaultsYAML returns every key with its built-in default as a YAML
// document, sections in the order of the Config structs. Secrets have no
// default (their file paths are empty). Keys that are required print
// empty; Validate names them.
func DefaultsYAML() []byte {
	var b strings.Builder
	b.WriteString("# iotgw configuration: every key with its default (iotgw config print-defaults).\n")
	b.WriteString("# Each key can also be set as IOTGW_<SECTION>_<KEY>; see examples/iotgw.yaml.\n")
	writeYAML(&b, reflect.ValueOf(Defaults()))
	return []byte(b.String())
}

func writeYAML(b *strings.Builder, val reflect.Value) {
	walkKeys(val, nil, func(path []string, v reflect.Value, section bool) {
		pad := strings.Repeat("  ", len(path)-1)
		if section {
			fmt.Fprintf(b, "%s%s:\n", pad, path[len(path)-1])
			return
		}
		fmt.Fprintf(b, "%s%s: %s\n", pad, path[len(path)-1], yamlScalar(v.Interface()))
	})
}

// walkKeys calls fn for every key of the config struct val, in field
// order, with its path of mapstructure names: once for a section (a
// nested struct, before its keys) and once for each leaf. Squashed
// structs add no level; fields without a name, or named "-", are skipped.
// It is the one reading of the struct tags that print-defaults and the
// environment binding share.
func walkKeys(val reflect.Value, path []string, fn func(path []string, v reflect.Value, section bool)) {
	t := val.Type()
	for i := range t.NumField() {
		tag := strings.Split(t.Field(i).Tag.Get("mapstructure"), ",")
		fv := val.Field(i)
		if len(tag) > 1 && tag[1] == "squash" {
			walkKeys(fv, path, fn)
			continue
		}
		if tag[0] == "" || tag[0] == "-" {
			continue
		}
		p := append(path[:len(path):len(path)], tag[0])
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(time.Time{}) {
			fn(p, fv, true)
			walkKeys(fv, p, fn)
			continue
		}
		fn(p, fv, false)
	}
}

// yamlScalar writes v in JSON, which YAML reads as flow style; a duration
// as its string ("30s", which Load parses back).
func yamlScalar(v any) string {
	if d, ok := v.(time.Duration); ok {
		v = d.String()
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
		return "[]"
	}
	out, err := json.Marshal(v)
	if err != nil { // cannot happen for config leaves (strings, numbers, bools, lists)
		return `""`
	}
	return string(out)
}
