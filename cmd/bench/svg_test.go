package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

// parseSVG decodes doc as XML and counts its elements by name.
func parseSVG(t *testing.T, doc []byte) map[string]int {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(doc))
	counts := map[string]int{}
	depth := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the picture is not well-formed XML: %v\n%s", err, doc)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			counts[e.Name.Local]++
			depth++
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 {
		t.Fatalf("the picture's elements are not balanced (depth %d at the end)", depth)
	}
	return counts
}

func TestWriteSVG(t *testing.T) {
	series := func(name string, n int, lag func(i int) float64) plotSeries {
		s := plotSeries{name: name, colour: systemColours[name], events: []event{{at: 3 * time.Second, label: "b resumed <&>"}}}
		for i := range n {
			s.slow = append(s.slow, point{float64(i) / 10, lag(i)})
			s.fast = append(s.fast, point{float64(i) / 10, lag(i) / 2})
		}
		return s
	}
	panels := []plotPanel{
		{title: "saturation <4 clients> & more", series: []plotSeries{
			series("casualdb", 50, func(i int) float64 { return float64(i) }), // 0 ms is clamped
			series("pglogical", 50, func(int) float64 { return 0.3 }),
		}},
		{title: "throttled", series: []plotSeries{series("casualdb-5", 1, func(int) float64 { return 1e9 })}},
		{title: "backlog"}, // no system ran it
	}
	var buf bytes.Buffer
	if err := writeSVG(&buf, `Probe lag "today" & 2 cores`, panels); err != nil {
		t.Fatal(err)
	}
	counts := parseSVG(t, buf.Bytes())
	if counts["svg"] != 1 {
		t.Errorf("%d svg elements, want 1", counts["svg"])
	}
	// Two lines (slowest, fastest) per series with more than one probe;
	// a dot for each line of the one-probe series.
	if counts["polyline"] != 4 || counts["circle"] != 2 {
		t.Errorf("%d polylines and %d circles, want 4 and 2", counts["polyline"], counts["circle"])
	}
	doc := buf.String()
	for _, want := range []string{"saturation &lt;4 clients&gt; &amp; more", "b resumed &lt;&amp;&gt;", "60 s", "0.1 ms", "no system ran this scenario"} {
		if !strings.Contains(doc, want) {
			t.Errorf("the picture lacks %q", want)
		}
	}
	if strings.Contains(doc, "NaN") || strings.Contains(doc, "Inf") {
		t.Error("the picture has NaN or Inf coordinates")
	}
}

func TestLagFraction(t *testing.T) {
	for _, tc := range []struct {
		ms, want float64
	}{
		{60000, 0}, {1e9, 0}, {0.1, 1}, {0, 1}, {-5, 1},
		{math.Sqrt(0.1 * 60000), 0.5},
	} {
		if got := lagFraction(tc.ms); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("lagFraction(%v) = %v, want %v", tc.ms, got, tc.want)
		}
	}
	if a, b := lagFraction(1), lagFraction(10); math.Abs((a-b)-(lagFraction(100)-lagFraction(1000))) > 1e-9 {
		t.Error("decades are not evenly spaced")
	}
}

func TestNiceStep(t *testing.T) {
	for _, tc := range []struct {
		span float64
		n    int
		want float64
	}{
		{10, 10, 1}, {20, 10, 2}, {33, 10, 5}, {100, 10, 10}, {0.5, 10, 0.05}, {0, 10, 1},
	} {
		if got := niceStep(tc.span, tc.n); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("niceStep(%v, %d) = %v, want %v", tc.span, tc.n, got, tc.want)
		}
	}
}

func TestLagPanels(t *testing.T) {
	start := time.Unix(1000, 0)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	rs := []*systemResult{{
		spec: systemSpec{name: "casualdb", sites: 3},
		scenarios: map[scenarioKind]*scenarioResult{
			scenarioBacklog: {start: start, probes: []probeLag{
				{id: 1, sent: start.Add(time.Second), lags: []time.Duration{ms(5000), ms(2)}},
				{id: 2, sent: start.Add(2 * time.Second), lags: []time.Duration{-1, -1}}, // arrived nowhere
			}},
		},
	}}
	panels := lagPanels(options{backlog: 100}, rs)
	if len(panels) != 4 {
		t.Fatalf("%d panels, want one per scenario with probes (4)", len(panels))
	}
	bl := panels[3]
	if len(bl.series) != 1 || len(bl.series[0].slow) != 1 {
		t.Fatalf("backlog panel = %+v, want one series with one probe", bl)
	}
	if got := bl.series[0].slow[0]; got != (point{1, 5000}) {
		t.Errorf("slowest point = %+v, want {1 5000}", got)
	}
	if got := bl.series[0].fast[0]; got != (point{1, 2}) {
		t.Errorf("fastest point = %+v, want {1 2}", got)
	}
	if len(panels[0].series) != 0 {
		t.Errorf("saturation panel has %d series for a system that did not run it", len(panels[0].series))
	}
}
