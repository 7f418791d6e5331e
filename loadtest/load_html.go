package loadtest

import (
	"fmt"
	"html/template"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// WriteHTML writes the report as one self-contained HTML page: a summary
// table and charts drawn as inline SVG (answer latency per priority over
// time, throughput, backlog). It loads nothing from anywhere.
func (rep *LoadReport) WriteHTML(w io.Writer) error {
	groups := loadPriorityOrder(slices.Collect(maps.Keys(rep.Latency.ByPriority)))
	var rows []loadHTMLLatencyRow
	rows = append(rows, loadHTMLLatencyRow{Group: "offer lag", P: rep.Latency.OfferLag})
	for _, g := range groups {
		s := rep.Latency.ByPriority[g]
		rows = append(rows,
			loadHTMLLatencyRow{Group: g, Kind: "accept", P: s.Accept},
			loadHTMLLatencyRow{Group: g, Kind: "answer", P: s.Answer})
	}
	var prios []loadHTMLPriorityRow
	for _, k := range loadPriorityOrder(slices.Collect(maps.Keys(rep.ByPriority))) {
		prios = append(prios, loadHTMLPriorityRow{Priority: k, C: rep.ByPriority[k]})
	}
	data := loadHTMLData{
		R:          rep,
		ErrorsSum:  loadSum(rep.Errors),
		Sources:    loadCounts(rep.Sources),
		Questions:  loadCounts(rep.Questions),
		Hints:      loadCounts(rep.Hints),
		ErrorText:  loadCounts(rep.Errors),
		Latencies:  rows,
		Priorities: prios,
		Latency:    loadSVGChart("answer latency", "ms", loadLatencyLines(rep)),
		Throughput: loadSVGChart("throughput", "msgs/s", loadThroughputLines(rep)),
		Backlog:    loadSVGChart("backlog", "msgs", []loadLine{loadSeriesLine(rep, "backlog", "#7b3fa0", false, func(s LoadSecond) float64 { return float64(s.Backlog) })}),
	}
	if err := loadHTMLTemplate.Execute(w, data); err != nil {
		return fmt.Errorf("write load report html: %w", err)
	}
	return nil
}

type loadHTMLLatencyRow struct {
	Group, Kind string
	P           LoadPercentiles
}

type loadHTMLPriorityRow struct {
	Priority string
	C        LoadPriorityCounts
}

type loadHTMLData struct {
	R                                    *LoadReport
	ErrorsSum                            int
	Sources, Questions, Hints, ErrorText string
	Latencies                            []loadHTMLLatencyRow
	Priorities                           []loadHTMLPriorityRow
	Latency, Throughput, Backlog         template.HTML
}

var loadHTMLTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"ms": func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>peakdesk load test: {{.R.Scenario}} {{.R.StartedAt.Format "2006-01-02 15:04:05"}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 960px; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.8rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.bad { color: #b00020; font-weight: bold; }
.meta { color: #555; font-size: .9rem; }
svg { width: 100%; height: auto; background: #fff; border: 1px solid #ddd; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
pre { background: #f6f6f6; padding: .5rem; font-size: .8rem; overflow-x: auto; }
</style>
</head>
<body>
<h1>peakdesk load test: {{.R.Scenario}}</h1>
<p class="meta">started {{.R.StartedAt.Format "2006-01-02 15:04:05 MST"}}, run {{.R.DurationS}} s (offers {{.R.OfferDurationS}} s),
target {{.R.Config.URL}} shop {{.R.Config.Shop}}, {{.R.Config.Follow}} follow,
concurrency {{.R.Config.Concurrency}}, {{.R.Config.Conversations}} conversations, mix {{.R.Config.Mix}}, seed {{.R.Config.Seed}}<br>
{{.R.Env.Go}} {{.R.Env.OS}}/{{.R.Env.Arch}}, {{.R.Env.CPUs}} CPUs {{.R.Env.CPUModel}} {{.R.Env.Hostname}}</p>

<h2>Summary</h2>
<table>
<tr><th>offered</th><th>accepted</th><th>answered</th><th>on POST</th><th>429</th><th>503</th><th>errors</th><th>lost</th><th>failed</th><th>duplicates</th><th>redelivered</th></tr>
<tr><td>{{.R.Offered}}</td><td>{{.R.Accepted}}</td><td>{{.R.Answered}}</td><td>{{.R.AnsweredOnPost}}</td>
<td>{{.R.Rejected.RateLimited429}}</td><td>{{.R.Rejected.Overloaded503}}</td><td>{{.ErrorsSum}}</td>
<td{{if .R.Lost}} class="bad"{{end}}>{{.R.Lost}}</td><td>{{.R.Failed}}</td>
<td{{if .R.Duplicates}} class="bad"{{end}}>{{.R.Duplicates}}</td><td>{{.R.Redeliveries}}</td></tr>
</table>
<table>
<tr><th class="l">sources</th><td class="l">{{.Sources}}</td></tr>
<tr><th class="l">questions</th><td class="l">{{.Questions}}</td></tr>
<tr><th class="l">hints</th><td class="l">{{.Hints}}</td></tr>
<tr><th class="l">errors</th><td class="l">{{.ErrorText}}</td></tr>
<tr><th class="l">answers on POST not seen stored</th><td class="l{{if .R.ShedUnstored}} bad{{end}}">{{.R.ShedUnstored}}</td></tr>
{{with .R.Shedding}}<tr><th class="l">offers/s while shedding</th><td class="l">{{printf "%.0f" .OffersPerS}} ({{.Offers}} offers, {{printf "%.1f" .FromS}}–{{printf "%.1f" .ToS}} s)</td></tr>
{{end}}<tr><th class="l">delayed by concurrency</th><td class="l">{{.R.DelayedByConcurrency}}</td></tr>
<tr><th class="l">SSE reconnects / missed</th><td class="l">{{.R.SSEReconnects}} / {{.R.SSEMissed}}</td></tr>
<tr><th class="l">unmatched replies / audit errors</th><td class="l">{{.R.UnmatchedReplies}} / {{.R.AuditErrors}}</td></tr>
</table>

<h2>Latency (ms)</h2>
<table>
<tr><th class="l">group</th><th class="l">kind</th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>
{{range .Latencies}}<tr><td class="l">{{.Group}}</td><td class="l">{{.Kind}}</td><td>{{.P.Count}}</td><td>{{ms .P.Mean}}</td><td>{{ms .P.P50}}</td><td>{{ms .P.P90}}</td><td>{{ms .P.P99}}</td><td>{{ms .P.Max}}</td></tr>
{{end}}</table>
{{if .Priorities}}<table>
<tr><th class="l">priority</th><th>accepted</th><th>answered</th><th>on POST</th><th>lost</th><th>duplicates</th></tr>
{{range .Priorities}}<tr><td class="l">{{.Priority}}</td><td>{{.C.Accepted}}</td><td>{{.C.Answered}}</td><td>{{.C.AnsweredOnPost}}</td><td>{{.C.Lost}}</td><td>{{.C.Duplicates}}</td></tr>
{{end}}</table>{{end}}

<h2>Answer latency per priority over time (p99 solid, p50 dashed)</h2>
{{.Latency}}
<h2>Throughput per second</h2>
{{.Throughput}}
<h2>Backlog (accepted − answered)</h2>
{{.Backlog}}

{{if .R.LostSamples}}<h2>Lost (first few)</h2><pre>{{range .R.LostSamples}}{{.}}
{{end}}</pre>{{end}}
{{if .R.DuplicateSamples}}<h2>Duplicates (first few)</h2><pre>{{range .R.DuplicateSamples}}{{.}}
{{end}}</pre>{{end}}
{{if .R.ErrorSamples}}<h2>Errors (first few)</h2><pre>{{range .R.ErrorSamples}}{{.}}
{{end}}</pre>{{end}}
</body>
</html>
`))

// loadLine is one line of a chart: a y value per second, NaN where there is
// no point (the line breaks there).
type loadLine struct {
	name   string
	color  string
	dashed bool
	ys     []float64
}

var loadPriorityColors = map[string]string{"p0": "#d62728", "p1": "#ff7f0e", "p2": "#1f77b4"}

func loadSeriesLine(rep *LoadReport, name, color string, dashed bool, f func(LoadSecond) float64) loadLine {
	l := loadLine{name: name, color: color, dashed: dashed, ys: make([]float64, len(rep.Series))}
	for i, s := range rep.Series {
		l.ys[i] = f(s)
	}
	return l
}

func loadThroughputLines(rep *LoadReport) []loadLine {
	return []loadLine{
		loadSeriesLine(rep, "offered", "#888888", false, func(s LoadSecond) float64 { return float64(s.Offered) }),
		loadSeriesLine(rep, "accepted", "#1f77b4", false, func(s LoadSecond) float64 { return float64(s.Accepted) }),
		loadSeriesLine(rep, "answered", "#2ca02c", false, func(s LoadSecond) float64 { return float64(s.Answered) }),
		loadSeriesLine(rep, "rejected", "#d62728", true, func(s LoadSecond) float64 { return float64(s.Rejected) }),
	}
}

func loadLatencyLines(rep *LoadReport) []loadLine {
	seen := map[string]bool{}
	for _, s := range rep.Series {
		for p := range s.Answer {
			seen[p] = true
		}
	}
	var lines []loadLine
	for _, p := range loadPriorityOrder(slices.Collect(maps.Keys(seen))) {
		color, ok := loadPriorityColors[p]
		if !ok {
			color = "#666666"
		}
		pick := func(q func(LoadSecondLatency) float64) func(LoadSecond) float64 {
			return func(s LoadSecond) float64 {
				if l, ok := s.Answer[p]; ok {
					return q(l)
				}
				return math.NaN()
			}
		}
		lines = append(lines,
			loadSeriesLine(rep, p+" p99", color, false, pick(func(l LoadSecondLatency) float64 { return l.P99 })),
			loadSeriesLine(rep, p+" p50", color, true, pick(func(l LoadSecondLatency) float64 { return l.P50 })))
	}
	return lines
}

// loadNiceCeil rounds v up to 1, 2 or 5 times a power of ten.
func loadNiceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	exp := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*exp*(1+1e-9) {
			return m * exp
		}
	}
	return 10 * exp
}

func loadFmtNum(v float64) string {
	if math.Abs(v) >= 100 || v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// loadSVGChart draws the lines over seconds as an inline SVG line chart.
// Everything variable in it is a number or an escaped name, so the result is
// safe to embed as template.HTML.
func loadSVGChart(title, unit string, lines []loadLine) template.HTML {
	const (
		width, height            = 900.0, 300.0
		left, right, top, bottom = 64.0, 16.0, 34.0, 36.0
	)
	n := 0
	ymax := 0.0
	for _, l := range lines {
		n = max(n, len(l.ys))
		for _, y := range l.ys {
			if !math.IsNaN(y) {
				ymax = max(ymax, y)
			}
		}
	}
	ytop := loadNiceCeil(ymax)
	xmax := float64(max(n-1, 1))
	px := func(i int) float64 { return left + float64(i)/xmax*(width-left-right) }
	py := func(v float64) float64 { return height - bottom - v/ytop*(height-top-bottom) }
	esc := template.HTMLEscapeString

	var b strings.Builder
	fmt.Fprintf(&b, `<svg viewBox="0 0 %g %g" role="img" aria-label="%s">`, width, height, esc(title))
	fmt.Fprintf(&b, `<title>%s</title>`, esc(title))

	// Grid and axes.
	for k := 0; k <= 5; k++ {
		v := ytop * float64(k) / 5
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>`, left, y, width-right, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`, left-6, y+4, loadFmtNum(v))
	}
	xstep := int(max(loadNiceCeil(xmax/10), 1))
	for i := 0; i <= int(xmax); i += xstep {
		x := px(i)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`, x, height-bottom, x, height-bottom+4)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%ds</text>`, x, height-bottom+16, i)
	}
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`, left, height-bottom, width-right, height-bottom)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`, left, top, left, height-bottom)
	fmt.Fprintf(&b, `<text x="12" y="%.1f" transform="rotate(-90 12 %.1f)" text-anchor="middle">%s</text>`,
		(top+height-bottom)/2, (top+height-bottom)/2, esc(unit))
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">seconds since start</text>`, width-right, height-4)

	// Lines; a gap in the data starts a new sub-path, and a lone point is
	// drawn as a dot by a round cap on a zero-length segment.
	for _, l := range lines {
		var d strings.Builder
		inRun := false
		for i, y := range l.ys {
			if math.IsNaN(y) {
				inRun = false
				continue
			}
			if !inRun {
				fmt.Fprintf(&d, "M%.1f %.1fl0 0", px(i), py(y))
				inRun = true
				continue
			}
			fmt.Fprintf(&d, "L%.1f %.1f", px(i), py(y))
		}
		if d.Len() == 0 {
			continue
		}
		dash := ""
		if l.dashed {
			dash = ` stroke-dasharray="5 4"`
		}
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"%s><title>%s</title></path>`,
			d.String(), esc(l.color), dash, esc(l.name))
	}

	// Legend across the top.
	x := left
	for _, l := range lines {
		dash := ""
		if l.dashed {
			dash = ` stroke-dasharray="5 4"`
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="14" x2="%.1f" y2="14" stroke="%s" stroke-width="2"%s/>`, x, x+22, esc(l.color), dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="18">%s</text>`, x+27, esc(l.name))
		x += 40 + 7*float64(len([]rune(l.name)))
	}
	if n == 0 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">no data</text>`, width/2, height/2)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped names only
}
