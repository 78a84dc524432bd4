package inflight

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestTryAcquire(t *testing.T) {
	tests := []struct {
		name     string
		held     []string
		want     []string
		acquired bool
	}{
		{"free key", nil, []string{"a"}, true},
		{"same key", []string{"a"}, []string{"a"}, false},
		{"other key", []string{"a"}, []string{"b"}, true},
		{"one of several taken", []string{"b"}, []string{"a", "b"}, false},
		{"empty keys ignored", []string{"a"}, []string{"", "c"}, true},
		{"duplicates in one call", nil, []string{"x", "x"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Set
			if len(tt.held) > 0 {
				if _, ok := s.TryAcquire(tt.held...); !ok {
					t.Fatal("setup acquire failed")
				}
			}
			before := s.Len()
			release, ok := s.TryAcquire(tt.want...)
			if ok != tt.acquired {
				t.Fatalf("TryAcquire(%v) = %v, want %v", tt.want, ok, tt.acquired)
			}
			if !ok {
				if s.Len() != before {
					t.Errorf("a refused acquire changed the set: %d -> %d", before, s.Len())
				}
				return
			}
			release()
			release() // twice is harmless
			if s.Len() != before {
				t.Errorf("after release Len = %d, want %d", s.Len(), before)
			}
		})
	}
}

func TestTryAcquireExclusiveUnderContention(t *testing.T) {
	var s Set
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				release, ok := s.TryAcquire("vol")
				if !ok {
					continue
				}
				n := inside.Add(1)
				if n > maxInside.Load() {
					maxInside.Store(n)
				}
				inside.Add(-1)
				release()
			}
		}()
	}
	wg.Wait()
	if maxInside.Load() > 1 {
		t.Fatalf("%d holders at once", maxInside.Load())
	}
	if s.Len() != 0 {
		t.Fatalf("keys left claimed: %d", s.Len())
	}
}
