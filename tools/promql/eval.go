package main

// `promql-names eval SCRAPES DASHBOARD OUT.json`: loads a folder of scrapes (`<unix ms>.prom`,
// as tests/observability.rs keeps them) into a throwaway TSDB and evaluates every dashboard
// target over the run with Prometheus' own query engine, as Grafana would. The JSON it writes
// is what scripts/plot-dashboard.py draws.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/tsdb"
)

type evalSeries struct {
	Legend string      `json:"legend"`
	Points [][]float64 `json:"points"` // [seconds since start, value]
}

type evalPanel struct {
	Title  string       `json:"title"`
	Unit   string       `json:"unit"`
	Series []evalSeries `json:"series"`
}

func loadScrapes(db *tsdb.DB, dir string) (time.Time, time.Time, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.prom"))
	if err != nil || len(files) == 0 {
		return time.Time{}, time.Time{}, fmt.Errorf("%s: no *.prom scrapes", dir)
	}
	sort.Strings(files)
	var first, last int64
	st := labels.NewSymbolTable()
	for _, f := range files {
		ms, err := strconv.ParseInt(strings.TrimSuffix(filepath.Base(f), ".prom"), 10, 64)
		if err != nil {
			return time.Time{}, time.Time{}, fmt.Errorf("%s: name is not a unix ms time", f)
		}
		if first == 0 {
			first = ms
		}
		last = ms
		data, err := os.ReadFile(f)
		if err != nil {
			return time.Time{}, time.Time{}, err
		}
		p := textparse.NewPromParser(data, st, false)
		app := db.Appender(context.Background())
		for {
			e, err := p.Next()
			if err != nil {
				break // io.EOF, or a torn last line
			}
			if e != textparse.EntrySeries {
				continue
			}
			_, _, v := p.Series()
			var ls labels.Labels
			p.Labels(&ls)
			if _, err := app.Append(0, ls, ms, v); err != nil {
				return time.Time{}, time.Time{}, fmt.Errorf("%s: %s: %w", f, ls, err)
			}
		}
		if err := app.Commit(); err != nil {
			return time.Time{}, time.Time{}, err
		}
	}
	return time.UnixMilli(first), time.UnixMilli(last), nil
}

var legendVar = regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`)

func evalDashboard(scrapes, dashboard, out string) error {
	tmp, err := os.MkdirTemp("", "promql-eval")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	opts := tsdb.DefaultOptions()
	opts.OutOfOrderTimeWindow = 0
	db, err := tsdb.Open(tmp, nil, nil, opts, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	start, end, err := loadScrapes(db, scrapes)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(dashboard)
	if err != nil {
		return err
	}
	var dash struct {
		Panels []struct {
			Title       string `json:"title"`
			FieldConfig struct {
				Defaults struct {
					Unit string `json:"unit"`
				} `json:"defaults"`
			} `json:"fieldConfig"`
			Targets []struct {
				Expr   string `json:"expr"`
				Legend string `json:"legendFormat"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		return err
	}
	// Scrapes are 1 s apart and carry no staleness markers: a series gone from the scrapes
	// (a partition released) ends after 3 s instead of Prometheus' 5 minutes.
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 10_000_000, Timeout: time.Minute, LookbackDelta: 3 * time.Second})
	step := 2 * time.Second
	var panels []evalPanel
	for _, p := range dash.Panels {
		ep := evalPanel{Title: p.Title, Unit: p.FieldConfig.Defaults.Unit}
		for _, t := range p.Targets {
			// Grafana's $__rate_interval at a 1 s scrape: a short window keeps the run's shape.
			expr := strings.ReplaceAll(t.Expr, "$__rate_interval", "10s")
			expr = grafanaVar.ReplaceAllString(expr, ".*")
			q, err := engine.NewRangeQuery(context.Background(), db, nil, expr, start, end, step)
			if err != nil {
				return fmt.Errorf("panel %q: %s: %w", p.Title, expr, err)
			}
			res := q.Exec(context.Background())
			if res.Err != nil {
				return fmt.Errorf("panel %q: %s: %w", p.Title, expr, res.Err)
			}
			m, err := res.Matrix()
			if err != nil {
				return fmt.Errorf("panel %q: %w", p.Title, err)
			}
			for _, s := range m {
				legend := legendVar.ReplaceAllStringFunc(t.Legend, func(v string) string {
					return s.Metric.Get(legendVar.FindStringSubmatch(v)[1])
				})
				es := evalSeries{Legend: legend}
				for _, f := range s.Floats {
					if math.IsNaN(f.F) || math.IsInf(f.F, 0) {
						continue
					}
					es.Points = append(es.Points, []float64{float64(f.T-start.UnixMilli()) / 1000, f.F})
				}
				ep.Series = append(ep.Series, es)
			}
			q.Close()
		}
		panels = append(panels, ep)
	}
	buf, err := json.MarshalIndent(panels, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, buf, 0o644)
}
