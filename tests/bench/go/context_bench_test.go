// The operations of ctx's tests/bench/ctx_bench.cpp against Go's own context
// package, for tests/bench/compare. Standard library only; runs offline:
//
//	GOFLAGS=-mod=mod GOCACHE=/tmp/ctx-go-cache GOPATH=/tmp/ctx-go-path go test -run '^$' -bench . -benchmem
//
// Extra metrics: B/ctx and peak-RSS-MiB (1M timeouts), p50-ns and p99-ns (wake-ups).
package ctxbench

import (
	"context"
	"runtime"
	"sort"
	"syscall"
	"testing"
	"time"
)

type key int

func BenchmarkDoneLive(b *testing.B) {
	c, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		select {
		case <-c.Done():
			b.Fatal("unexpected")
		default:
		}
	}
}

func BenchmarkErrLive(b *testing.B) {
	c, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		if c.Err() != nil {
			b.Fatal("unexpected")
		}
	}
}

// A cancelable child of a cancelable parent, then cancel it.
func BenchmarkWithCancel(b *testing.B) {
	root, stop := context.WithCancel(context.Background())
	defer stop()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, cancel := context.WithCancel(root)
		cancel()
	}
}

// A one-hour timeout under a cancelable parent, cancelled before it fires.
func BenchmarkWithTimeout(b *testing.B) {
	root, stop := context.WithCancel(context.Background())
	defer stop()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, cancel := context.WithTimeout(root, time.Hour)
		cancel()
	}
}

var sink context.Context

func BenchmarkWithValue(b *testing.B) {
	root := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sink = context.WithValue(root, key(1), i)
	}
}

// An absent key, looked up through ten value layers.
func BenchmarkValueMissDepth10(b *testing.B) {
	c := context.Background()
	for i := 0; i < 10; i++ {
		c = context.WithValue(c, key(i), i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if c.Value(key(99)) != nil {
			b.Fatal("unexpected")
		}
	}
}

// 100k children of one parent, then cancel the parent.
func BenchmarkFanout100k(b *testing.B) {
	const n = 100000
	cancels := make([]context.CancelFunc, 0, n)
	for i := 0; i < b.N; i++ {
		root, cancel := context.WithCancel(context.Background())
		for j := 0; j < n; j++ {
			_, c := context.WithCancel(root)
			cancels = append(cancels, c)
		}
		cancel()
		cancels = cancels[:0]
	}
}

func heapAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func peakRSSMiB() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Maxrss) / 1024
}

// Live heap per context at the peak of the first iteration in this process.
// Later iterations would undercount: stopped timers of the previous one stay
// in the runtime's timer heaps (and keep their contexts alive) until cleaned.
var pendingPerCtx float64

// 1M pending one-hour timeouts under one parent, then cancel the parent.
// B/ctx: live heap per context at the peak (after a GC, so garbage is not counted).
func BenchmarkPendingTimeouts1M(b *testing.B) {
	const n = 1000000
	cancels := make([]context.CancelFunc, 0, n)
	for i := 0; i < b.N; i++ {
		measure := pendingPerCtx == 0
		var h0 uint64
		if measure {
			b.StopTimer()
			runtime.GC()
			h0 = heapAlloc()
			b.StartTimer()
		}
		root, cancel := context.WithCancel(context.Background())
		for j := 0; j < n; j++ {
			_, c := context.WithTimeout(root, time.Hour)
			cancels = append(cancels, c)
		}
		if measure {
			b.StopTimer()
			runtime.GC()
			pendingPerCtx = float64(heapAlloc()-h0) / n
			b.StartTimer()
		}
		cancel()
		cancels = cancels[:0]
	}
	b.ReportMetric(pendingPerCtx, "B/ctx")
	b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
}

// A goroutine blocked on <-Done; time from cancel to its wake-up. The
// goroutine gets 200 us to block first; ns/op is the mean latency.
func BenchmarkCancelWake(b *testing.B) {
	measureWake(b, func() (func(), func()) {
		c, cancel := context.WithCancel(context.Background())
		return func() { <-c.Done() }, cancel
	})
}

// The floor for CancelWake: the primitive Done is, a channel, woken by close.
func BenchmarkRawWake(b *testing.B) {
	measureWake(b, func() (func(), func()) {
		ch := make(chan struct{})
		return func() { <-ch }, func() { close(ch) }
	})
}

func measureWake(b *testing.B, round func() (block, wake func())) {
	lat := make([]float64, 0, b.N)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		block, wake := round()
		ready := make(chan struct{})
		woke := make(chan time.Time, 1)
		go func() { close(ready); block(); woke <- time.Now() }()
		<-ready
		time.Sleep(200 * time.Microsecond)
		t0 := time.Now()
		wake()
		d := (<-woke).Sub(t0)
		total += d
		lat = append(lat, float64(d.Nanoseconds()))
	}
	sort.Float64s(lat)
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(lat[len(lat)/2], "p50-ns")
	b.ReportMetric(lat[int(float64(len(lat)-1)*0.99+0.5)], "p99-ns")
}
