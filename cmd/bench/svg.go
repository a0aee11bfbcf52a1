package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
)

// The picture: a panel per scenario, probe lag against the seconds since the
// scenario started, on a log scale from 0.1 ms to 60 s, a pair of lines per
// system (its slowest and its fastest peer for each probe).

// point is one probe in a panel: seconds since the scenario's start, lag in
// milliseconds.
type point struct{ x, y float64 }

// plotSeries is one system's probes in one panel.
type plotSeries struct {
	name   string
	colour string
	slow   []point // the slowest peer's lag of each probe
	fast   []point // the fastest peer's
	events []event
}

// plotPanel is one scenario.
type plotPanel struct {
	title  string
	series []plotSeries
}

// systemColours are the series' colours, by system name; others get grey.
var systemColours = map[string]string{
	"casualdb":   "#d62728",
	"pglogical":  "#1f77b4",
	"casualdb-5": "#2ca02c",
}

// lagPanels builds the picture's panels from the results: one per scenario
// with probes.
func lagPanels(o options, rs []*systemResult) []plotPanel {
	var panels []plotPanel
	for _, k := range []scenarioKind{scenarioSat4, scenarioSat8, scenarioThrottled, scenarioBacklog} {
		p := plotPanel{title: scenarioTitle(o, k)}
		for _, r := range rs {
			s := r.scenarios[k]
			if s == nil {
				continue
			}
			colour := systemColours[r.spec.name]
			if colour == "" {
				colour = "#7f7f7f"
			}
			ps := plotSeries{name: r.spec.name, colour: colour, events: s.events}
			if s.err != nil {
				ps.name += " (failed)"
			}
			for _, pr := range s.probes {
				slow, fast, ok := pr.slowestFastest()
				if !ok {
					continue
				}
				x := pr.sent.Sub(s.start).Seconds()
				ps.slow = append(ps.slow, point{x, msOf(slow)})
				ps.fast = append(ps.fast, point{x, msOf(fast)})
			}
			p.series = append(p.series, ps)
		}
		panels = append(panels, p)
	}
	return panels
}

// Geometry of the picture, in pixels.
const (
	svgWidth    = 1000
	svgHeader   = 64
	panelHeight = 300
	plotLeft    = 80  // room for the y labels
	plotRight   = 210 // room for the legend
	plotTop     = 34  // room for the panel's title
	plotBottom  = 44  // room for the x labels
	minLagMS    = 0.1
	maxLagMS    = 60000
)

// yDecades are the gridlines of the lag axis, in ms, with their labels.
var yDecades = []struct {
	ms    float64
	label string
}{{0.1, "0.1 ms"}, {1, "1 ms"}, {10, "10 ms"}, {100, "100 ms"}, {1000, "1 s"}, {10000, "10 s"}, {60000, "60 s"}}

// svgWriter accumulates the document in memory; writeSVG writes it out once.
type svgWriter struct{ b bytes.Buffer }

func (w *svgWriter) f(format string, args ...any) { fmt.Fprintf(&w.b, format, args...) }

// text writes s escaped as XML character data.
func (w *svgWriter) text(x, y float64, attrs, s string) {
	w.f(`<text x="%.1f" y="%.1f" %s>`, x, y, attrs)
	_ = xml.EscapeText(&w.b, []byte(s))
	w.b.WriteString("</text>\n")
}

// writeSVG writes the picture with title and panels to out.
func writeSVG(out io.Writer, title string, panels []plotPanel) error {
	w := &svgWriter{}
	height := svgHeader + panelHeight*max(1, len(panels))
	w.f(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	w.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n",
		svgWidth, height, svgWidth, height)
	w.f(`<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", svgWidth, height)
	w.text(svgWidth/2, 26, `font-size="18" text-anchor="middle" font-weight="bold"`, title)
	w.text(svgWidth/2, 48, `font-size="12" text-anchor="middle" fill="#444"`,
		"lag of each probe (inserted at site a) at its slowest peer (solid) and its fastest (dashed); log scale")
	for i, p := range panels {
		w.panel(p, float64(svgHeader+i*panelHeight))
	}
	w.f("</svg>\n")
	if _, err := out.Write(w.b.Bytes()); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	return nil
}

// panel draws p with its top edge at top.
func (w *svgWriter) panel(p plotPanel, top float64) {
	left, right := float64(plotLeft), float64(svgWidth-plotRight)
	ptop, pbottom := top+plotTop, top+panelHeight-plotBottom
	xmax := 1.0
	for _, s := range p.series {
		for _, pt := range s.slow {
			xmax = math.Max(xmax, pt.x)
		}
		for _, e := range s.events {
			xmax = math.Max(xmax, e.at.Seconds())
		}
	}
	step := niceStep(xmax, 10)
	xmax = math.Ceil(xmax/step) * step
	sx := func(x float64) float64 { return left + (right-left)*x/xmax }
	sy := func(ms float64) float64 { return ptop + (pbottom-ptop)*lagFraction(ms) }

	w.text(left, top+20, `font-size="14" font-weight="bold"`, p.title)
	w.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", left, ptop, right-left, pbottom-ptop)
	for _, d := range yDecades {
		y := sy(d.ms)
		w.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, right, y)
		w.text(left-6, y+4, `font-size="11" text-anchor="end"`, d.label)
	}
	for x := 0.0; x <= xmax+step/2; x += step {
		px := sx(x)
		w.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", px, ptop, px, pbottom)
		w.text(px, pbottom+15, `font-size="11" text-anchor="middle"`, trimFloat(x))
	}
	w.text((left+right)/2, pbottom+34, `font-size="12" text-anchor="middle"`, "seconds since the scenario started")
	w.f(`<text x="%.1f" y="%.1f" font-size="12" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">probe lag</text>`+"\n",
		left-58, (ptop+pbottom)/2, left-58, (ptop+pbottom)/2)
	if len(p.series) == 0 {
		w.text((left+right)/2, (ptop+pbottom)/2, `font-size="14" text-anchor="middle" fill="#888"`, "no system ran this scenario")
	}
	// Events are labelled from the bottom up, a row each, so that labels
	// of different systems at the same moment do not overprint.
	row := 0
	for i, s := range p.series {
		for _, e := range s.events {
			px := sx(e.at.Seconds())
			w.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="2,3" stroke-opacity="0.7"/>`+"\n",
				px, ptop, px, pbottom, s.colour)
			anchor, dx := "start", 3.0
			if px > right-80 {
				anchor, dx = "end", -3
			}
			w.text(px+dx, pbottom-5-11*float64(row), fmt.Sprintf(`font-size="10" fill="%s" text-anchor="%s"`, s.colour, anchor), e.label)
			row++
		}
		w.polyline(s.fast, s.colour, `stroke-width="1" stroke-dasharray="4,3" stroke-opacity="0.8"`, sx, sy)
		w.polyline(s.slow, s.colour, `stroke-width="1.5"`, sx, sy)
		// Legend.
		ly := ptop + 14 + 20*float64(i)
		w.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", right+14, ly-4, right+38, ly-4, s.colour)
		w.text(right+44, ly, `font-size="12"`, fmt.Sprintf("%s (%d probes)", s.name, len(s.slow)))
	}
}

// polyline draws pts; a single point is drawn as a dot.
func (w *svgWriter) polyline(pts []point, colour, attrs string, sx, sy func(float64) float64) {
	switch len(pts) {
	case 0:
		return
	case 1:
		w.f(`<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>`+"\n", sx(pts[0].x), sy(pts[0].y), colour)
		return
	}
	var b strings.Builder
	for i, p := range pts {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", sx(p.x), sy(p.y))
	}
	w.f(`<polyline points="%s" fill="none" stroke="%s" %s/>`+"\n", b.String(), colour, attrs)
}

// lagFraction places ms on the log axis: 0 at the top (60 s), 1 at the
// bottom (0.1 ms); values outside are clamped.
func lagFraction(ms float64) float64 {
	ms = math.Min(math.Max(ms, minLagMS), maxLagMS)
	lo, hi := math.Log10(minLagMS), math.Log10(maxLagMS)
	return (hi - math.Log10(ms)) / (hi - lo)
}

// niceStep returns a step of 1, 2 or 5 times a power of ten that cuts
// [0, span] into at most n intervals.
func niceStep(span float64, n int) float64 {
	if span <= 0 || n <= 0 {
		return 1
	}
	raw := span / float64(n)
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*pow >= raw {
			return m * pow
		}
	}
	return 10 * pow
}

func trimFloat(x float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", x), "0"), ".")
}
