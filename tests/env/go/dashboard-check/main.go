// dashboard-check: validates a classic (schemaVersion 39-42) Grafana dashboard JSON against
// Grafana's published dashboard types, github.com/grafana/grafana-foundation-sdk/go (Apache-2.0):
// a strict decode (unknown fields, wrong types, missing required fields) with every default
// panel and query plugin registered, then the SDK's Validate(). Grafana's server is not run.
//
// Built by tests/env/prepare.sh; tests/e2e/tests/chart.rs runs it on the chart's dashboard.
//
// usage: dashboard-check DASHBOARD.json   (exit 0: clean, 1: problems, 2: usage or I/O error)
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

var unexpected = regexp.MustCompile(`^unexpected field '(.*)'$`)

// collect flattens SDK errors into "$.json.path: message" lines.
// SDK paths contain Go type names as segments (".Panel", ".RowPanel",
// ".Dashboard", ".FieldConfig"...) - JSON keys in this schema are camelCase,
// so capitalised segments are dropped.
func collect(out map[string]bool, prefix string, err error) {
	if err == nil {
		return
	}
	var bes cog.BuildErrors
	if !errors.As(err, &bes) {
		bes = cog.BuildErrors{{Path: "", Message: err.Error()}}
	}
	for _, be := range bes {
		var segs []string
		for _, s := range strings.Split(be.Path, ".") {
			if s != "" && !(s[0] >= 'A' && s[0] <= 'Z') {
				segs = append(segs, s)
			}
		}
		path, msg := prefix, be.Message
		if len(segs) > 0 {
			path += "." + strings.Join(segs, ".")
		}
		if m := unexpected.FindStringSubmatch(msg); m != nil {
			path, msg = path+"."+m[1], "unexpected field"
		}
		out[path+": "+msg] = true
	}
}

type rawPanel struct {
	Datasource *struct {
		Type *string `json:"type"`
	} `json:"datasource"`
	FieldConfig json.RawMessage   `json:"fieldConfig"`
	Targets     []json.RawMessage `json:"targets"`
	Panels      []json.RawMessage `json:"panels"` // rows only
}

// extraPanelChecks covers two gaps in the SDK's Panel.UnmarshalJSONStrict (v0.0.22):
//  1. fieldConfig is decoded with lenient json.Unmarshal (only defaults.custom is
//     strict), so typos in fieldConfig.defaults / overrides go unnoticed;
//  2. targets are decoded before panel.datasource, so the panel datasource type
//     is never used as a hint: a target without its own datasource.type is kept
//     as an untyped UnknownDataquery.
func extraPanelChecks(out map[string]bool, path string, raw json.RawMessage) {
	var p rawPanel
	if json.Unmarshal(raw, &p) != nil {
		return // already reported by the SDK
	}
	if len(p.FieldConfig) > 0 && string(p.FieldConfig) != "null" {
		collect(out, path+".fieldConfig", new(dashboard.FieldConfigSource).UnmarshalJSONStrict(p.FieldConfig))
	}
	if p.Datasource != nil && p.Datasource.Type != nil {
		for i, t := range p.Targets {
			var own struct {
				Datasource *struct {
					Type string `json:"type"`
				} `json:"datasource"`
			}
			if json.Unmarshal(t, &own) == nil && (own.Datasource == nil || own.Datasource.Type == "") {
				tp := path + ".targets[" + strconv.Itoa(i) + "]"
				dq, err := cog.StrictUnmarshalDataquery(t, *p.Datasource.Type)
				collect(out, tp, err)
				if err == nil {
					collect(out, tp, dq.Validate())
				}
			}
		}
	}
	for i, child := range p.Panels {
		extraPanelChecks(out, path+".panels["+strconv.Itoa(i)+"]", child)
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-check DASHBOARD.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// Register panel (timeseries, stat, table, ...) and dataquery (prometheus,
	// loki, ...) variants so options / fieldConfig.defaults.custom / targets
	// are decoded into typed structs, strictly.
	plugins.RegisterDefaultPlugins()

	problems := map[string]bool{}
	var d dashboard.Dashboard
	if err := d.UnmarshalJSONStrict(raw); err != nil {
		collect(problems, "$", err)
	}
	collect(problems, "$", d.Validate())

	var top struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if json.Unmarshal(raw, &top) == nil {
		for i, p := range top.Panels {
			extraPanelChecks(problems, "$.panels["+strconv.Itoa(i)+"]", p)
		}
	}

	lines := make([]string, 0, len(problems))
	for l := range problems {
		lines = append(lines, l)
	}
	// natural order: panels[2] before panels[10]
	num := regexp.MustCompile(`\d+`)
	key := func(s string) string {
		return num.ReplaceAllStringFunc(s, func(n string) string { return fmt.Sprintf("%08s", n) })
	}
	sort.Slice(lines, func(i, j int) bool { return key(lines[i]) < key(lines[j]) })
	for _, l := range lines {
		fmt.Println(l)
	}
	if len(lines) > 0 {
		fmt.Fprintf(os.Stderr, "%s: %d problem(s)\n", os.Args[1], len(lines))
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "%s: OK\n", os.Args[1])
}
