// Command promql-names checks the PromQL of the Grafana dashboard and of the PrometheusRule
// against a scrape of the daemon's /metrics: every metric an expression selects must be exported,
// and every label it matches on, groups by or joins on must be one those metrics carry.
//
//	promql-names check SCRAPE DASHBOARD.json RULES.yaml
//	promql-names rules RULES.yaml > rules.yml   (the PrometheusRule's spec, for promtool)
//	promql-names eval SCRAPES DASHBOARD.json OUT.json   (eval.go)
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

func main() {
	if len(os.Args) == 5 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2], os.Args[3], os.Args[4]))
	}
	if len(os.Args) == 5 && os.Args[1] == "eval" {
		if err := evalDashboard(os.Args[2], os.Args[3], os.Args[4]); err != nil {
			fail(err)
		}
		return
	}
	if len(os.Args) == 3 && os.Args[1] == "rules" {
		spec, err := ruleSpec(os.Args[2])
		if err != nil {
			fail(err)
		}
		out, err := yaml.Marshal(spec)
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(out)
		return
	}
	fail(fmt.Errorf("usage: promql-names check SCRAPE DASHBOARD RULES | promql-names rules RULES | promql-names eval SCRAPES DASHBOARD OUT"))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "promql-names:", err)
	os.Exit(2)
}

// family is what the scrape says about one metric family: its type and the label names its
// samples carry.
type family struct {
	kind   string
	labels map[string]bool
}

func loadScrape(path string) (map[string]family, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]family{}
	for name, mf := range fams {
		fam := family{kind: strings.ToLower(mf.GetType().String()), labels: map[string]bool{}}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				fam.labels[l.GetName()] = true
			}
		}
		out[name] = fam
	}
	return out, nil
}

// series resolves a selected name to the exported family and the labels its series carry
// (histograms: `_bucket` adds `le`; `_sum` and `_count` the family's own).
func series(fams map[string]family, name string) (map[string]bool, bool) {
	if f, ok := fams[name]; ok && f.kind != "histogram" {
		return f.labels, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suffix)
		if f, ok := fams[base]; found && ok && f.kind == "histogram" {
			labels := map[string]bool{}
			for l := range f.labels {
				labels[l] = true
			}
			if suffix == "_bucket" {
				labels["le"] = true
			}
			return labels, true
		}
	}
	return nil, false
}

// expression is one PromQL expression and where it was found.
type expression struct {
	where, expr string
}

var grafanaVar = regexp.MustCompile(`\$(\{[A-Za-z0-9_]+(:[a-z]+)?\}|[A-Za-z0-9_]+)`)

// grafanaExpr replaces Grafana's variables with values PromQL parses: the interval ones by a
// duration, the others (inside label matchers) by a regex.
func grafanaExpr(e string) string {
	return grafanaVar.ReplaceAllStringFunc(e, func(v string) string {
		if strings.Contains(v, "interval") || strings.Contains(v, "__range") {
			return "5m"
		}
		return ".*"
	})
}

func dashboardExprs(path string) ([]expression, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []expression
	for _, p := range dash.Panels {
		for i, t := range p.Targets {
			if t.Expr == "" {
				continue
			}
			out = append(out, expression{fmt.Sprintf("%s: panel %q target %d", path, p.Title, i), grafanaExpr(t.Expr)})
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		if q == "" {
			continue
		}
		m := labelValues.FindStringSubmatch(strings.TrimSpace(q))
		if m == nil {
			return nil, fmt.Errorf("%s: variable %q: only label_values(selector, label) is checked here: %s", path, v.Name, q)
		}
		// `label_values(sel, l)` needs `l` on `sel`: the same as grouping `sel` by `l`.
		out = append(out, expression{fmt.Sprintf("%s: variable %q", path, v.Name), fmt.Sprintf("count by (%s) (%s)", m[2], grafanaExpr(m[1]))})
	}
	return out, nil
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// ruleSpec is the PrometheusRule's `spec`, which is a Prometheus rule file as it stands.
func ruleSpec(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cr struct {
		Kind string         `yaml:"kind"`
		Spec map[string]any `yaml:"spec"`
	}
	if err := yaml.Unmarshal(data, &cr); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cr.Kind != "PrometheusRule" || cr.Spec == nil {
		return nil, fmt.Errorf("%s: not a PrometheusRule with a spec", path)
	}
	return cr.Spec, nil
}

func ruleExprs(path string) ([]expression, error) {
	spec, err := ruleSpec(path)
	if err != nil {
		return nil, err
	}
	data, _ := yaml.Marshal(spec)
	var rf ruleFile
	if err := yaml.Unmarshal(data, &rf); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []expression
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			out = append(out, expression{fmt.Sprintf("%s: group %q rule %q", path, g.Name, r.Alert+r.Record), r.Expr})
		}
	}
	return out, nil
}

// problems lists what in `expr` the scrape does not back.
func problems(fams map[string]family, expr string) ([]string, int, error) {
	root, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, 0, err
	}
	var out []string
	selectors := 0
	parser.Inspect(root, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			selectors++
			labels, ok := series(fams, n.Name)
			if !ok {
				out = append(out, fmt.Sprintf("metric %q is not exported", n.Name))
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name != model.MetricNameLabel && !labels[m.Name] {
					out = append(out, fmt.Sprintf("label %q is not on %s", m.Name, n.Name))
				}
			}
		case *parser.AggregateExpr:
			out = append(out, missing(fams, n.Expr, n.Grouping, "grouping of "+n.Op.String())...)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				out = append(out, missing(fams, n.LHS, n.VectorMatching.MatchingLabels, "left side of "+n.Op.String())...)
				out = append(out, missing(fams, n.RHS, n.VectorMatching.MatchingLabels, "right side of "+n.Op.String())...)
				out = append(out, missing(fams, n.RHS, n.VectorMatching.Include, "group_left/right of "+n.Op.String())...)
			}
		}
		return nil
	})
	return out, selectors, nil
}

// missing lists the `labels` that none of the series selected under `e` carry.
func missing(fams map[string]family, e parser.Expr, labels []string, what string) []string {
	have := map[string]bool{}
	names := []string{}
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
			ls, _ := series(fams, vs.Name)
			for l := range ls {
				have[l] = true
			}
		}
		return nil
	})
	var out []string
	for _, l := range labels {
		if !have[l] {
			out = append(out, fmt.Sprintf("%s: label %q is on none of %v", what, l, names))
		}
	}
	return out
}

func check(scrape, dashboard, rules string) int {
	fams, err := loadScrape(scrape)
	if err != nil {
		fail(err)
	}
	d, err := dashboardExprs(dashboard)
	if err != nil {
		fail(err)
	}
	r, err := ruleExprs(rules)
	if err != nil {
		fail(err)
	}
	bad := 0
	used := map[string]bool{}
	for _, e := range append(d, r...) {
		ps, selectors, err := problems(fams, e.expr)
		if err != nil {
			ps = []string{"does not parse: " + err.Error()}
		} else if selectors == 0 {
			ps = []string{"selects no metric"}
		}
		for _, p := range ps {
			fmt.Printf("FAIL %s: %s\n    %s\n", e.where, p, e.expr)
			bad++
		}
		if len(ps) == 0 {
			fmt.Printf("ok   %s\n", e.where)
		}
		root, _ := parser.NewParser(parser.Options{}).ParseExpr(e.expr)
		if root != nil {
			parser.Inspect(root, func(node parser.Node, _ []parser.Node) error {
				if vs, ok := node.(*parser.VectorSelector); ok {
					used[vs.Name] = true
				}
				return nil
			})
		}
	}
	names := make([]string, 0, len(used))
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Printf("%d expressions (%d dashboard, %d rules), %d metrics used, %d problems\n", len(d)+len(r), len(d), len(r), len(names), bad)
	if bad > 0 {
		return 1
	}
	return 0
}
