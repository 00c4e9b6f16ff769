// Command render evaluates the queries of the sluice Grafana dashboard
// (deploy/grafana/sluice.json) with Prometheus's own PromQL engine over
// /metrics scrapes recorded during a lab run, and writes gnuplot data files
// and a script that draws the dashboard's panels as one PNG
// (docs/img/dashboard.png). It is not Grafana: it draws the same panels
// (titles, grid positions, queries, legends, units, value mappings) with
// gnuplot. scripts/dashboard.sh runs it; see docs/dashboard.md.
//
//	render check -dashboard FILE -metrics-doc docs/metrics.md
//	    every query parses; every metric it names is documented, with the
//	    labels it uses
//	render eval -dashboard FILE -scrapes FILE -events FILE -out DIR
//	    DIR/dashboard.gp plus one data file per panel; run gnuplot on it
//
// It is its own Go module (it needs the Prometheus server's packages, which
// the agent does not), so the agent's go.mod stays as it is.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/tsdb"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "check":
		err = runCheck(os.Args[2:])
	case "eval":
		err = runEval(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: render check -dashboard FILE -metrics-doc FILE | render eval -dashboard FILE -scrapes FILE -events FILE -out DIR")
	os.Exit(2)
}

// Dashboard is the part of a Grafana dashboard this tool reads.
type Dashboard struct {
	Title       string  `json:"title"`
	Panels      []Panel `json:"panels"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
}

type Panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	GridPos     struct {
		X, Y, W, H int
	} `json:"gridPos"`
	FieldConfig struct {
		Defaults struct {
			Unit     string `json:"unit"`
			Mappings []struct {
				Type    string                  `json:"type"`
				Options map[string]ValueMapping `json:"options"`
			} `json:"mappings"`
			Custom struct {
				DrawStyle string `json:"drawStyle"`
			} `json:"custom"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []Target `json:"targets"`
}

type ValueMapping struct {
	Text  string `json:"text"`
	Color string `json:"color"`
	Index int    `json:"index"`
}

type Target struct {
	RefID        string `json:"refId"`
	Expr         string `json:"expr"`
	LegendFormat string `json:"legendFormat"`
}

func loadDashboard(path string) (*Dashboard, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}

// expand replaces the dashboard's template variables the way Grafana does
// with every variable set to All (allValue ".*") and a fixed rate interval.
func expand(expr, rateInterval string) string {
	r := strings.NewReplacer(
		"${service}", ".*", "$service", ".*",
		"${pool}", ".*", "$pool", ".*",
		"${__rate_interval}", rateInterval, "$__rate_interval", rateInterval,
	)
	return r.Replace(expr)
}

var promParser = parser.NewParser(parser.Options{})

// ---- check ----

type docMetric struct {
	typ    string
	labels map[string]bool
}

var docRow = regexp.MustCompile("^\\| `(sluice_[a-z0-9_]+)` \\| ([a-z]+) \\|([^|]*)\\|")

func readMetricsDoc(path string) (map[string]docMetric, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]docMetric{}
	for _, line := range strings.Split(string(b), "\n") {
		m := docRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		dm := docMetric{typ: m[2], labels: map[string]bool{}}
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.TrimSpace(l); l != "" {
				dm.labels[l] = true
			}
		}
		out[m[1]] = dm
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no metric table rows found", path)
	}
	return out, nil
}

// resolve maps a series name used in a query to its documented metric
// (a histogram's _bucket, _sum and _count series to the histogram).
func resolve(doc map[string]docMetric, name string) (string, docMetric, bool) {
	if m, ok := doc[name]; ok {
		return name, m, true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base := strings.TrimSuffix(name, suf)
		if m, ok := doc[base]; ok && base != name && m.typ == "histogram" {
			return base, m, true
		}
	}
	return "", docMetric{}, false
}

func runCheck(args []string) error {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	dashPath := fs.String("dashboard", "deploy/grafana/sluice.json", "dashboard JSON")
	docPath := fs.String("metrics-doc", "docs/metrics.md", "metrics reference")
	fs.Parse(args)
	d, err := loadDashboard(*dashPath)
	if err != nil {
		return err
	}
	doc, err := readMetricsDoc(*docPath)
	if err != nil {
		return err
	}
	var problems []string
	queries := 0
	titles := map[string]bool{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if titles[p.Title] {
			problems = append(problems, fmt.Sprintf("panel %q: title used twice", p.Title))
		}
		titles[p.Title] = true
		if len(p.Targets) == 0 {
			problems = append(problems, fmt.Sprintf("panel %q: no query", p.Title))
		}
		for _, t := range p.Targets {
			queries++
			where := fmt.Sprintf("panel %q query %s", p.Title, t.RefID)
			expr, err := promParser.ParseExpr(expand(t.Expr, "5m"))
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", where, err))
				continue
			}
			// instance and job are the target labels Prometheus adds to
			// every scraped series (a panel per node uses instance).
			allowed := map[string]bool{"__name__": true, "instance": true, "job": true}
			var used []string
			parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
				switch n := n.(type) {
				case *parser.VectorSelector:
					name := n.Name
					for _, m := range n.LabelMatchers {
						if m.Name == labels.MetricName {
							if name == "" {
								name = m.Value
							}
							continue
						}
						used = append(used, m.Name)
					}
					base, dm, ok := resolve(doc, name)
					if !ok {
						problems = append(problems, fmt.Sprintf("%s: metric %s is not in %s", where, name, *docPath))
						return nil
					}
					for l := range dm.labels {
						allowed[l] = true
					}
					if dm.typ == "histogram" {
						allowed["le"] = true
					}
					_ = base
				case *parser.AggregateExpr:
					used = append(used, n.Grouping...)
				case *parser.BinaryExpr:
					if n.VectorMatching != nil {
						used = append(used, n.VectorMatching.MatchingLabels...)
						used = append(used, n.VectorMatching.Include...)
					}
				}
				return nil
			})
			for _, l := range used {
				if !allowed[l] {
					problems = append(problems, fmt.Sprintf("%s: label %q belongs to none of the query's metrics", where, l))
				}
			}
			for _, l := range legendLabels(t.LegendFormat) {
				if !allowed[l] {
					problems = append(problems, fmt.Sprintf("%s: legend label %q belongs to none of the query's metrics", where, l))
				}
			}
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr == "" {
			continue
		}
		queries++
		if _, err := promParser.ParseExpr(expand(a.Expr, "5m")); err != nil {
			problems = append(problems, fmt.Sprintf("annotation %q: %v", a.Name, err))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	fmt.Printf("render check: %d panels, %d queries: every query parses, names documented metrics and their labels only\n", len(titles), queries)
	return nil
}

var legendRE = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)

func legendLabels(f string) []string {
	var out []string
	for _, m := range legendRE.FindAllStringSubmatch(f, -1) {
		out = append(out, m[1])
	}
	return out
}

func legend(f string, l labels.Labels) string {
	if f == "" || f == "__auto" {
		return l.String()
	}
	return strings.TrimSpace(legendRE.ReplaceAllStringFunc(f, func(s string) string {
		return l.Get(legendRE.FindStringSubmatch(s)[1])
	}))
}

// ---- eval ----

// scrape marker: scripts/dashboard.sh writes "# sluice-scrape <unix ms>"
// before each /metrics body.
const marker = "# sluice-scrape "

type scrape struct {
	ts   int64
	body []byte
}

func readScrapes(path string) ([]scrape, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []scrape
	for _, chunk := range strings.Split(string(b), "\n"+marker) {
		chunk = strings.TrimPrefix(chunk, marker)
		nl := strings.IndexByte(chunk, '\n')
		if nl < 0 {
			continue
		}
		ts, err := strconv.ParseInt(strings.TrimSpace(chunk[:nl]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: bad scrape marker %q", path, chunk[:nl])
		}
		body := chunk[nl+1:]
		if !strings.Contains(body, "sluice_build_info") {
			continue // a failed scrape (agent not up yet, curl error)
		}
		out = append(out, scrape{ts: ts, body: []byte(body)})
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("%s: %d good scrapes, need at least 2", path, len(out))
	}
	return out, nil
}

// load appends every scrape to a TSDB head, with a staleness marker for a
// series that disappears, as Prometheus's scrape loop does.
func load(db *tsdb.DB, scrapes []scrape) error {
	prev := map[string]labels.Labels{}
	st := labels.NewSymbolTable()
	for _, s := range scrapes {
		app := db.Appender(context.Background())
		seen := map[string]labels.Labels{}
		p := textparse.NewPromParser(s.body, st, false)
		for {
			e, err := p.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("scrape at %d: %w", s.ts, err)
			}
			if e != textparse.EntrySeries {
				continue
			}
			var l labels.Labels
			p.Labels(&l)
			_, ts, v := p.Series()
			t := s.ts
			if ts != nil {
				t = *ts
			}
			l = labels.NewBuilder(l).Set("job", "sluice").Set("instance", "lab-lb").Labels()
			key := l.String()
			if _, dup := seen[key]; dup {
				continue
			}
			seen[key] = l
			if _, err := app.Append(0, l, t, v); err != nil {
				return fmt.Errorf("append %s: %w", key, err)
			}
		}
		for key, l := range prev {
			if _, ok := seen[key]; !ok {
				if _, err := app.Append(0, l, s.ts, math.Float64frombits(value.StaleNaN)); err != nil {
					return fmt.Errorf("stale marker %s: %w", key, err)
				}
			}
		}
		if err := app.Commit(); err != nil {
			return err
		}
		prev = seen
	}
	return nil
}

type event struct {
	t     float64 // seconds from the first scrape
	label string
}

func readEvents(path string, start int64) ([]event, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []event
	for _, line := range strings.Split(string(b), "\n") {
		ms, text, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseInt(ms, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: bad event line %q", path, line)
		}
		out = append(out, event{t: float64(v-start) / 1000, label: text})
	}
	return out, nil
}

type series struct {
	name   string
	points [][2]float64 // t (s from start), value
}

func runEval(args []string) error {
	fs := flag.NewFlagSet("eval", flag.ExitOnError)
	dashPath := fs.String("dashboard", "deploy/grafana/sluice.json", "dashboard JSON")
	scrapesPath := fs.String("scrapes", "", "recorded scrapes")
	eventsPath := fs.String("events", "", "scenario events: '<unix ms> <text>' lines")
	outDir := fs.String("out", "", "output directory (data files, dashboard.gp)")
	png := fs.String("png", "dashboard.png", "PNG the gnuplot script writes")
	rateInterval := fs.String("rate-interval", "10s", "value of $__rate_interval")
	step := fs.Duration("step", time.Second, "query resolution")
	subtitle := fs.String("subtitle", "", "second header line")
	fs.Parse(args)
	if *scrapesPath == "" || *outDir == "" {
		usage()
	}
	d, err := loadDashboard(*dashPath)
	if err != nil {
		return err
	}
	scrapes, err := readScrapes(*scrapesPath)
	if err != nil {
		return err
	}
	events, err := readEvents(*eventsPath, scrapes[0].ts)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "sluice-render-tsdb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := tsdb.Open(tmp, logger, nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := load(db, scrapes); err != nil {
		return err
	}
	engine := promql.NewEngine(promql.EngineOpts{
		Logger: logger, MaxSamples: 50_000_000, Timeout: 2 * time.Minute,
		LookbackDelta: 5 * time.Minute,
	})
	start := time.UnixMilli(scrapes[0].ts)
	end := time.UnixMilli(scrapes[len(scrapes)-1].ts)
	span := end.Sub(start).Seconds()
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}

	results := map[int][]series{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		var all []series
		for _, t := range p.Targets {
			qs := expand(t.Expr, *rateInterval)
			q, err := engine.NewRangeQuery(context.Background(), db, nil, qs, start, end, *step)
			if err != nil {
				return fmt.Errorf("panel %q: %w", p.Title, err)
			}
			res := q.Exec(context.Background())
			if res.Err != nil {
				return fmt.Errorf("panel %q: %s: %w", p.Title, qs, res.Err)
			}
			m, err := res.Matrix()
			if err != nil {
				return fmt.Errorf("panel %q: %w", p.Title, err)
			}
			for _, s := range m {
				se := series{name: legend(t.LegendFormat, s.Metric)}
				for _, f := range s.Floats {
					se.points = append(se.points, [2]float64{float64(f.T-scrapes[0].ts) / 1000, f.F})
				}
				all = append(all, se)
			}
			q.Close()
		}
		sort.SliceStable(all, func(i, j int) bool { return all[i].name < all[j].name })
		results[p.ID] = all
		fmt.Fprintf(os.Stderr, "render: %-40s %d series\n", p.Title, len(all))
	}
	return writeGnuplot(d, results, events, span, *outDir, *png, *subtitle, *rateInterval, len(scrapes))
}

// ---- gnuplot ----

// Grafana's named colours used by the dashboard's value mappings.
var namedColors = map[string]string{
	"green": "#56A64B", "yellow": "#E0B400", "red": "#E02F44", "text": "#8E8E8E",
	"orange": "#FF780A", "blue": "#3274D9", "purple": "#A352CC",
}

// The series palette (Grafana's classic one, in its order).
var palette = []string{"#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0", "#508642", "#CCA300", "#447EBC", "#C15C17"}

func gpString(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}

func writeGnuplot(d *Dashboard, results map[int][]series, events []event, span float64, outDir, png, subtitle, rateInterval string, nscrapes int) error {
	const (
		width     = 2400.0
		unitH     = 46.0 // pixels per grid row
		headerTop = 100.0
		eventH    = 20.0
	)
	headerH := headerTop + float64(len(events))*eventH + 20
	rows := 0
	for _, p := range d.Panels {
		if y := p.GridPos.Y + p.GridPos.H; y > rows {
			rows = y
		}
	}
	height := headerH + float64(rows)*unitH + 10
	sx := func(col float64) float64 { return col / 24 }
	sy := func(row float64) float64 { return 1 - (headerH+row*unitH)/height }

	var g strings.Builder
	fmt.Fprintf(&g, "# generated by deploy/grafana/render: gnuplot %s\n", "dashboard.gp")
	fmt.Fprintf(&g, "set terminal pngcairo noenhanced size %d,%d font 'DejaVu Sans,11' background rgb '#FFFFFF'\n", int(width), int(height))
	fmt.Fprintf(&g, "set output %s\n", gpString(png))
	g.WriteString("set encoding utf8\nset datafile missing NaN\nset multiplot\n")

	// Header and row titles: drawn with an empty plot over the whole canvas.
	g.WriteString("set origin 0,0\nset size 1,1\nunset border\nunset tics\nunset key\nset lmargin 0\nset rmargin 0\nset tmargin 0\nset bmargin 0\n")
	li := 1
	label := func(text string, x, y float64, opts string) {
		fmt.Fprintf(&g, "set label %d %s at screen %.4f,%.4f %s\n", li, gpString(text), x, y, opts)
		li++
	}
	label(d.Title+" — Grafana dashboard deploy/grafana/sluice.json, rendered by gnuplot (not a Grafana screenshot)", 0.006, 1-22/height, "font 'DejaVu Sans Bold,17'")
	label(fmt.Sprintf("Every panel: its queries from the JSON, evaluated by the Prometheus PromQL engine over %d scrapes of the agent's /metrics (1 s apart) in a netns lab run; $service = $pool = All, $__rate_interval = %s. x: seconds since the first scrape.", nscrapes, rateInterval), 0.006, 1-48/height, "font 'DejaVu Sans,12'")
	if subtitle != "" {
		label(subtitle, 0.006, 1-70/height, "font 'DejaVu Sans,12'")
	}
	// the scenario, one event a line
	for i, e := range events {
		label(fmt.Sprintf("(%d)  t=%.0fs  %s", i+1, e.t, e.label), 0.006, 1-(headerTop+float64(i)*eventH)/height, "font 'DejaVu Sans,12' tc rgb '#333333'")
	}
	for _, p := range d.Panels {
		if p.Type != "row" {
			continue
		}
		y := sy(float64(p.GridPos.Y)) - 0.5*unitH/height
		label(p.Title, 0.006, y, "font 'DejaVu Sans Bold,15' tc rgb '#1F60C4'")
		fmt.Fprintf(&g, "set arrow %d from screen 0.006,%.4f to screen 0.994,%.4f nohead lc rgb '#C7D0D9' lw 1\n", li, y-0.35*unitH/height, y-0.35*unitH/height)
		li++
	}
	g.WriteString("plot [0:1][0:1] NaN notitle\nunset label\nunset arrow\n\n")

	// Common panel style.
	g.WriteString("set border 3 lc rgb '#9FA7B3'\nset tics nomirror out scale 0.5 textcolor rgb '#464C54' font ',10'\nset grid xtics ytics lc rgb '#E4E7EB' lw 1 dt 1\n")
	g.WriteString("set lmargin 10\nset rmargin 2\nset tmargin 2\nunset bmargin\n")
	g.WriteString("set key outside below left horizontal Left reverse samplen 1.5 spacing 1.1 font ',10' textcolor rgb '#222222'\n")

	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		ox, oy := sx(float64(p.GridPos.X)), sy(float64(p.GridPos.Y+p.GridPos.H))
		w, h := sx(float64(p.GridPos.W)), float64(p.GridPos.H)*unitH/height
		fmt.Fprintf(&g, "\n# panel %d: %s\n", p.ID, p.Title)
		fmt.Fprintf(&g, "set origin %.4f,%.4f\nset size %.4f,%.4f\n", ox+0.002, oy+0.002, w-0.004, h-0.004)
		fmt.Fprintf(&g, "set object 1 rectangle from screen %.4f,%.4f to screen %.4f,%.4f behind fc rgb '#FFFFFF' fs solid 1.0 border lc rgb '#D0D5DB' lw 1\n",
			ox+0.002, oy+0.002, ox+w-0.002, oy+h-0.002)
		fmt.Fprintf(&g, "set title %s font 'DejaVu Sans Bold,12' textcolor rgb '#202226' offset 0,-0.4\n", gpString(p.Title))
		fmt.Fprintf(&g, "set xrange [0:%.1f]\nset xtics 0,15 format '%%gs'\n", span)
		// scenario markers
		for i, e := range events {
			fmt.Fprintf(&g, "set arrow %d from first %.2f, graph 0 to first %.2f, graph 1 nohead lc rgb '#B0B0B0' dt 2 lw 1 back\n", i+1, e.t, e.t)
			fmt.Fprintf(&g, "set label %d '%d' at first %.2f, graph 1 offset 0.2,-0.6 font ',8' tc rgb '#888888' front\n", i+1, i+1, e.t)
		}
		data := filepath.Join(outDir, fmt.Sprintf("panel%02d.dat", p.ID))
		ser := results[p.ID]
		if p.Type == "state-timeline" {
			if err := stateTimeline(&g, p, ser, data); err != nil {
				return err
			}
		} else {
			if err := timeseries(&g, p, ser, data); err != nil {
				return err
			}
		}
		g.WriteString("unset object 1\nunset label\nunset arrow\nunset ytics\nset ytics nomirror\nset yrange [*:*]\nset format y '%g'\nunset ylabel\n")
	}
	g.WriteString("unset multiplot\n")
	return os.WriteFile(filepath.Join(outDir, "dashboard.gp"), []byte(g.String()), 0o644)
}

// yAxis picks how a panel's values are shown, as Grafana's unit would:
// a scale factor applied to the data and a tick format with the unit.
func yAxis(unit string, max float64) (format string, scale float64) {
	suffix := map[string]string{"pps": "p/s", "Bps": "B/s", "reqps": "req/s", "ops": "/s"}[unit]
	switch unit {
	case "percentunit":
		return "%g%%", 100
	case "s":
		if max < 1 {
			return "%g ms", 1000
		}
		return "%g s", 1
	}
	prefix, scale := "", 1.0
	switch {
	case max >= 1e9:
		prefix, scale = "G", 1e-9
	case max >= 1e6:
		prefix, scale = "M", 1e-6
	case max >= 1e4:
		prefix, scale = "k", 1e-3
	}
	if prefix != "" || suffix != "" {
		return "%g " + prefix + suffix, scale
	}
	return "%g", scale
}

func timeseries(g *strings.Builder, p Panel, ser []series, data string) error {
	var f strings.Builder
	n := 0
	for _, s := range ser {
		fmt.Fprintf(&f, "# %s\n", s.name)
		var last float64 = -1
		for _, pt := range s.points {
			if last >= 0 && pt[0]-last > 1.5 {
				f.WriteString("\n") // a gap: no value there (Grafana leaves it empty)
			}
			fmt.Fprintf(&f, "%.3f %.9g\n", pt[0], pt[1])
			last = pt[0]
		}
		f.WriteString("\n\n")
		n++
	}
	if err := os.WriteFile(data, []byte(f.String()), 0o644); err != nil {
		return err
	}
	if n == 0 {
		g.WriteString("set yrange [0:1]\nset ytics ('0' 0)\nset label 99 'No data' at graph 0.5, graph 0.5 center font ',14' tc rgb '#8E8E8E'\n")
		g.WriteString("plot NaN notitle\n")
		return nil
	}
	// min 0 as in the JSON; max automatic, with a little headroom
	max := 0.0
	for _, s := range ser {
		for _, pt := range s.points {
			if v := pt[1]; !math.IsNaN(v) && !math.IsInf(v, 0) && v > max {
				max = v
			}
		}
	}
	format, scale := yAxis(p.FieldConfig.Defaults.Unit, max)
	fmt.Fprintf(g, "set format y '%s'\n", format)
	if max == 0 {
		max = 1
	}
	fmt.Fprintf(g, "set yrange [0:%g]\n", max*scale*1.12)
	bars := p.FieldConfig.Defaults.Custom.DrawStyle == "bars"
	var plots []string
	for i, s := range ser {
		color := palette[i%len(palette)]
		style := fmt.Sprintf("with lines lw 1.6 lc rgb '%s'", color)
		if bars {
			style = fmt.Sprintf("with boxes fs transparent solid 0.45 noborder lc rgb '%s'", color)
		}
		plots = append(plots, fmt.Sprintf("%s index %d using 1:($2*%g) %s title %s", gpString(data), i, scale, style, gpString(s.name)))
	}
	if bars {
		g.WriteString("set boxwidth 1.0 absolute\n")
	}
	g.WriteString("plot " + strings.Join(plots, ", \\\n     ") + "\n")
	return nil
}

func stateTimeline(g *strings.Builder, p Panel, ser []series, data string) error {
	maps := map[string]ValueMapping{}
	for _, m := range p.FieldConfig.Defaults.Mappings {
		for k, v := range m.Options {
			maps[k] = v
		}
	}
	color := func(v float64) (int64, bool) {
		mv, ok := maps[strconv.FormatFloat(v, 'f', -1, 64)]
		if !ok {
			return 0, false
		}
		hex := namedColors[mv.Color]
		if strings.HasPrefix(mv.Color, "#") {
			hex = mv.Color
		}
		c, err := strconv.ParseInt(strings.TrimPrefix(hex, "#"), 16, 64)
		return c, err == nil
	}
	var f strings.Builder
	n := len(ser)
	var ytics []string
	for i, s := range ser {
		row := float64(n - 1 - i) // first series on top
		ytics = append(ytics, fmt.Sprintf("%s %g", gpString(s.name), row))
		for _, pt := range s.points {
			c, ok := color(pt[1])
			if !ok {
				continue
			}
			fmt.Fprintf(&f, "%.3f %g %d\n", pt[0], row, c)
		}
	}
	if err := os.WriteFile(data, []byte(f.String()), 0o644); err != nil {
		return err
	}
	if n == 0 {
		g.WriteString("set yrange [0:1]\nset ytics ('' 0)\nset label 99 'No data' at graph 0.5, graph 0.5 center font ',14' tc rgb '#8E8E8E'\nplot NaN notitle\n")
		return nil
	}
	// legend entries: the mappings, in their index order
	type kv struct {
		k string
		v ValueMapping
	}
	var ordered []kv
	for k, v := range maps {
		ordered = append(ordered, kv{k, v})
	}
	sort.Slice(ordered, func(i, j int) bool { return ordered[i].v.Index < ordered[j].v.Index })
	lmargin := 10
	for _, s := range ser {
		if l := len(s.name)*9/10 + 3; l > lmargin {
			lmargin = l
		}
	}
	fmt.Fprintf(g, "set lmargin %d\nset grid noytics\nset yrange [-0.6:%g]\nset ytics (%s) font ',9'\n", lmargin, float64(n)-0.4, strings.Join(ytics, ", "))
	plots := []string{fmt.Sprintf("%s using 1:2:(0.56):(0.38):3 with boxxyerror fs solid 1.0 noborder lc rgb variable notitle", gpString(data))}
	for _, o := range ordered {
		v, _ := strconv.ParseFloat(o.k, 64)
		c, _ := color(v)
		plots = append(plots, fmt.Sprintf("NaN with boxes fs solid 1.0 lc rgb '#%06X' title %s", c, gpString(o.v.Text)))
	}
	g.WriteString("plot " + strings.Join(plots, ", \\\n     ") + "\n")
	g.WriteString("set lmargin 10\nset grid xtics ytics\n")
	return nil
}
