package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestParseFio(t *testing.T) {
	data, err := os.ReadFile("testdata/fio-randread.json")
	if err != nil {
		t.Fatal(err)
	}
	// fio sometimes prints a notice before the document.
	f, err := parseFio(append([]byte("fio: note: something\n"), data...))
	if err != nil {
		t.Fatal(err)
	}
	want := fioFigures{MiBps: 47.1, IOPS: 12054.7, MeanLatUS: 82, P99LatUS: 366.6}
	if f != want {
		t.Errorf("parseFio = %+v, want %+v", f, want)
	}
}

func TestParseFioErrors(t *testing.T) {
	for name, doc := range map[string]string{
		"not json":   "fio: failed to open file",
		"no jobs":    `{"jobs": []}`,
		"job failed": `{"jobs": [{"error": 5, "read": {"bw_bytes": 10}}]}`,
		"no data":    `{"jobs": [{"error": 0}]}`,
	} {
		if _, err := parseFio([]byte(doc)); err == nil {
			t.Errorf("%s: parseFio succeeded", name)
		}
	}
}

func TestCompareRounds(t *testing.T) {
	mb := func(v float64) fioFigures { return fioFigures{MiBps: v, IOPS: v * 10} }
	for _, tc := range []struct {
		name           string
		plain, volume  []float64
		wantPlain      float64
		wantVolume     float64
		wantRatio      float64
		wantRoundRatio []float64
	}{
		{"none", nil, nil, 0, 0, 0, nil},
		{"one round", []float64{100}, []float64{90}, 100, 90, 0.9, []float64{0.9}},
		// The disk slows down and speeds up between rounds; each
		// round's pair met the same disk, so the median of the
		// per-round ratios (0.95) is the figure, not the ratio of the
		// medians (100 / 100).
		{"drift", []float64{100, 50, 200}, []float64{45, 100, 190}, 100, 100, 0.95, []float64{0.45, 2, 0.95}},
		{"steady", []float64{100, 102, 98}, []float64{95, 97, 93}, 100, 95, 0.95, []float64{0.95, 0.951, 0.949}},
		// An even count takes the lower middle: always a measured value.
		{"two rounds", []float64{100, 100}, []float64{80, 100}, 100, 80, 0.8, []float64{0.8, 1}},
	} {
		var plain, volume []fioFigures
		for _, v := range tc.plain {
			plain = append(plain, mb(v))
		}
		for _, v := range tc.volume {
			volume = append(volume, mb(v))
		}
		c := compareRounds(plain, volume)
		if c.Plain != mb(tc.wantPlain) {
			t.Errorf("%s: plain %+v, want the %v MiB/s run", tc.name, c.Plain, tc.wantPlain)
		}
		if c.Volume != mb(tc.wantVolume) {
			t.Errorf("%s: volume %+v, want the %v MiB/s run", tc.name, c.Volume, tc.wantVolume)
		}
		if c.Ratio != tc.wantRatio || !slices.Equal(c.RoundRatios, tc.wantRoundRatio) {
			t.Errorf("%s: ratio %v, rounds %v; want %v, %v", tc.name, c.Ratio, c.RoundRatios, tc.wantRatio, tc.wantRoundRatio)
		}
		if len(tc.plain) > 0 && plain[0] != mb(tc.plain[0]) {
			t.Errorf("%s: compareRounds reordered its input", tc.name)
		}
	}
}

// The plain file and the data-path volume are on the pool at once.
func TestDataPathFitsPool(t *testing.T) {
	for _, p := range []profile{fullProfile(), smokeProfile()} {
		if need, have := dataPathSpace(p), p.poolImageSize(); need > have {
			t.Errorf("%s profile: data path needs %d MiB, pool image is %d MiB", p.Name, need/mib, have/mib)
		}
		if p.FioRounds < 1 {
			t.Errorf("%s profile: %d fio rounds", p.Name, p.FioRounds)
		}
	}
}

// Each setting's ratio is shown next to the plain figure it was compared
// with, and the note says how many rounds each setting had.
func TestMarkdownDataPath(t *testing.T) {
	figs := func(v float64) map[string]fioFigures {
		m := map[string]fioFigures{}
		for _, pat := range fioPatterns() {
			m[pat.Name] = fioFigures{MiBps: v}
		}
		return m
	}
	r := &report{Mode: "full", Backend: "loop", DataPath: &dataPathResult{Pool: "xfs-reflink", FileBytes: gib, Plain: figs(400),
		Volumes: []volumeDataPath{
			{DirectIO: "true", Rounds: 3, Plain: figs(400), Figures: figs(380)},
			{DirectIO: "false", Rounds: 1, Plain: figs(321), Figures: figs(300)},
		}}}
	md := markdown(r)
	for _, want := range []string{"3 rounds with --direct-io=true, 1 round with --direct-io=false",
		"median of the per-round ratios", "| seq-read-1M | 400 | 380 |", "| 321 | 300 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}
