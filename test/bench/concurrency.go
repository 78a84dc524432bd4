package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// concurrencyResult is many clients creating and deleting volumes at once.
type concurrencyResult struct {
	Pool    string  `json:"pool"`
	Clients int     `json:"clients"`
	Calls   int     `json:"calls"`
	Seconds float64 `json:"seconds"`
	// CallsPerSecond counts every answered call; OKPerSecond only the
	// successful ones.
	CallsPerSecond float64 `json:"calls_per_second"`
	OKPerSecond    float64 `json:"ok_per_second"`
	// Codes counts answers by gRPC code; NonSpecErrors are those the CSI
	// spec does not define for these calls (driver bugs).
	Codes         map[string]int     `json:"codes"`
	NonSpecErrors int                `json:"non_spec_errors"`
	FirstErrors   []string           `json:"first_errors,omitempty"`
	Latency       map[string]summary `json:"latency_under_load"`
}

// clientTally is one client's share, merged after all have finished so
// that no lock is taken on the measured path.
type clientTally struct {
	create, del []time.Duration
	codes       map[codes.Code]int
	errs        []string
	leftover    []string
}

// measureConcurrency runs clients that each create a 16 MiB volume and
// delete it again, over their own connection, until their pair budget or
// the duration runs out. Every answer is counted; a refused create is not
// followed by a delete.
func measureConcurrency(ctx context.Context, s *session, p profile) (res concurrencyResult, err error) {
	res = concurrencyResult{Pool: s.pool.Info().Kind, Clients: p.ConcClients, Codes: map[string]int{}}
	tallies := make([]clientTally, p.ConcClients)
	clients := make([]*client, p.ConcClients)
	for i := range clients {
		if clients[i], err = dial(s.tarn.socket); err != nil {
			return res, err
		}
		defer clients[i].Close()
	}
	// The deadline is checked between pairs, never by cancelling a call:
	// a create cut off mid-way could leave a volume nobody knows the ID of.
	var deadline time.Time
	if p.ConcDuration > 0 {
		deadline = time.Now().Add(p.ConcDuration.d())
	}
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Go(func() { tallies[i] = runClient(ctx, clients[i], i, p.ConcPairs, deadline) })
	}
	wg.Wait()
	elapsed := time.Since(start)

	var create, del []time.Duration
	var leftover []string
	for _, t := range tallies {
		create, del = append(create, t.create...), append(del, t.del...)
		for code, n := range t.codes {
			res.Codes[code.String()] += n
			res.Calls += n
			if !specCode(code) {
				res.NonSpecErrors += n
			}
		}
		res.FirstErrors = append(res.FirstErrors, t.errs...)
		leftover = append(leftover, t.leftover...)
	}
	res.FirstErrors = res.FirstErrors[:min(5, len(res.FirstErrors))]
	res.Seconds = elapsed.Seconds()
	res.CallsPerSecond = ratio(float64(res.Calls), elapsed.Seconds())
	res.OKPerSecond = ratio(float64(res.Codes[codes.OK.String()]), elapsed.Seconds())
	res.Latency = map[string]summary{callCreateVolume: summarize(create), callDeleteVolume: summarize(del)}
	// Volumes whose delete failed go now, or the next measurement would
	// count them.
	err = s.cleanup(&objects{volumes: leftover})
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	if res.NonSpecErrors > 0 {
		err = errors.Join(err, fmt.Errorf("%d answers with codes the CSI spec does not define for these calls: %v",
			res.NonSpecErrors, res.FirstErrors))
	}
	return res, err
}

func runClient(ctx context.Context, c *client, n, pairs int, deadline time.Time) clientTally {
	t := clientTally{codes: map[codes.Code]int{}}
	count := func(err error) {
		t.codes[status.Code(err)]++
		if err != nil && len(t.errs) < 5 {
			t.errs = append(t.errs, err.Error())
		}
	}
	for i := 0; pairs == 0 || i < pairs; i++ {
		if ctx.Err() != nil || (!deadline.IsZero() && time.Now().After(deadline)) {
			break
		}
		id, d, err := c.createVolume(ctx, fmt.Sprintf("bench-conc-%02d-%06d", n, i), smallVolume, mountCap("ext4"), nil)
		count(err)
		if err != nil {
			continue
		}
		t.create = append(t.create, d)
		d, err = c.deleteVolume(ctx, id)
		count(err)
		if err != nil {
			t.leftover = append(t.leftover, id)
			continue
		}
		t.del = append(t.del, d)
	}
	return t
}
