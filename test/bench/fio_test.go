package main

import (
	"os"
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
