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
	writeYAML(&b, 0, reflect.ValueOf(Defaults()))
	return []byte(b.String())
}

func writeYAML(b *strings.Builder, indent int, val reflect.Value) {
	t := val.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")
		fv := val.Field(i)
		if len(tag) > 1 && tag[1] == "squash" {
			writeYAML(b, indent, fv)
			continue
		}
		key := tag[0]
		if key == "" || key == "-" {
			continue
		}
		pad := strings.Repeat("  ", indent)
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(time.Time{}) {
			fmt.Fprintf(b, "%s%s:\n", pad, key)
			writeYAML(b, indent+1, fv)
			continue
		}
		fmt.Fprintf(b, "%s%s: %s\n", pad, key, yamlScalar(fv.Interface()))
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
