package loop

import (
	"encoding/json"
	"testing"

	"github.com/tarn-csi/tarn/pkg/backend"
)

// FuzzDecodeMeta feeds arbitrary bytes to the metadata parser: it must
// never panic, and whatever it accepts must carry a valid ID and size, so
// a damaged or forged file can never name a path outside the pool.
func FuzzDecodeMeta(f *testing.F) {
	good, _ := json.Marshal(volumeMeta{Version: metaVersion, ID: backend.VolumeIDFor("a"), Name: "a", SizeBytes: 1 << 20})
	snap, _ := json.Marshal(snapshotMeta{Version: metaVersion, ID: backend.SnapshotIDFor("s"), SourceVolumeID: backend.VolumeIDFor("a"), SizeBytes: 1 << 20})
	for _, seed := range [][]byte{good, snap, []byte("{"), []byte(`{"version":1,"id":"../../etc","sizeBytes":1}`),
		[]byte(`{"version":2}`), []byte("null"), []byte(`{"version":1,"id":"vol-00000000000000000000000000000000","sizeBytes":-1}`)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v volumeMeta
		if err := decodeMeta(data, &v); err == nil {
			if !backend.ValidVolumeID(v.ID) || v.SizeBytes <= 0 || v.Version != metaVersion {
				t.Fatalf("accepted volume record %+v", v)
			}
		}
		var s snapshotMeta
		if err := decodeMeta(data, &s); err == nil {
			if !backend.ValidSnapshotID(s.ID) || s.SizeBytes <= 0 {
				t.Fatalf("accepted snapshot record %+v", s)
			}
		}
	})
}
