// leasepeer: a Lease per issue with client-go's leaderelection (LeaseLock), driven by
// `make bench-peers`. Each mode prints plain lines on stdout that the bench driver reads:
//
//	leasepeer latency -n N -c C      "acquire <µs>" and "release <µs>" per issue
//	leasepeer contend -clients K -issues I -seconds S
//	                                 "acquired <count>", "held <count>", "wall_us <µs>"
//	leasepeer hold -issues I         "held" once all are led; releases them when stdin closes
//	leasepeer wait -issue X          "acquired" once it leads X
//
// Timing is client-go's usual: lease 15 s, renew deadline 10 s, retry period 2 s, and
// ReleaseOnCancel. Client-side rate limiting is off (QPS -1), as the other peers have none.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
	// How long one try of the contention phase waits for a lease before giving up.
	tryWindow = time.Second
)

var namespace, prefix string

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: leasepeer latency|contend|hold|wait [flags]"))
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	fs.StringVar(&namespace, "namespace", "bench", "namespace of the Leases")
	fs.StringVar(&prefix, "prefix", "cg", "prefix of the Lease names")
	n := fs.Int("n", 1000, "issues (latency)")
	c := fs.Int("c", 8, "in flight (latency)")
	clients := fs.Int("clients", 16, "contending clients")
	issues := fs.Int("issues", 1000, "issues (contend, hold)")
	seconds := fs.Float64("seconds", 10, "duration (contend)")
	issue := fs.String("issue", "", "the issue (wait)")
	_ = fs.Parse(os.Args[2:])
	// Quiet, like the Rust peers run with RUST_LOG=warn: client-go logs every acquisition.
	klog.SetLogger(logr.Discard())

	switch mode {
	case "latency":
		latency(newClient(), *n, *c)
	case "contend":
		contend(*clients, *issues, time.Duration(*seconds*float64(time.Second)))
	case "hold":
		hold(newClient(), *issues)
	case "wait":
		waitFor(newClient(), *issue)
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "leasepeer:", err)
	os.Exit(2)
}

func newClient() *kubernetes.Clientset {
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), nil).ClientConfig()
	if err != nil {
		fail(err)
	}
	cfg.QPS = -1 // no client-side rate limiter
	return kubernetes.NewForConfigOrDie(rest.CopyConfig(cfg))
}

var identities atomic.Int64

// metaFor names the Lease of an issue.
func metaFor(issue string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: prefix + "-" + issue}
}

// lease is one issue's elector, running until stop is called.
type lease struct {
	leading chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
}

// elect starts leader election on the issue's Lease.
func elect(cs *kubernetes.Clientset, issue string) *lease {
	id := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), identities.Add(1))
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metaFor(issue),
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &lease{leading: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   leaseDuration,
		RenewDeadline:   renewDeadline,
		RetryPeriod:     retryPeriod,
		ReleaseOnCancel: true,
		Name:            issue,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { close(l.leading) },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		fail(err)
	}
	go func() {
		defer close(l.done)
		elector.Run(ctx)
	}()
	return l
}

// stop cancels the election and waits until the Lease is given up.
func (l *lease) stop() {
	l.cancel()
	<-l.done
}

func latency(cs *kubernetes.Clientset, n, c int) {
	leases := make([]*lease, n)
	var out sync.Mutex
	run := func(op func(i int) time.Duration, label string) {
		sem := make(chan struct{}, c)
		var wg sync.WaitGroup
		for i := range n {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				took := op(i)
				out.Lock()
				fmt.Printf("%s %d\n", label, took.Microseconds())
				out.Unlock()
			}()
		}
		wg.Wait()
	}
	run(func(i int) time.Duration {
		start := time.Now()
		l := elect(cs, fmt.Sprintf("lat-%d", i))
		<-l.leading
		leases[i] = l
		return time.Since(start)
	}, "acquire")
	run(func(i int) time.Duration {
		start := time.Now()
		leases[i].stop()
		return time.Since(start)
	}, "release")
}

func contend(clients, issues int, d time.Duration) {
	var acquired, held atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range clients {
		cs := newClient()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				l := elect(cs, fmt.Sprintf("con-%d", rand.IntN(issues)))
				select {
				case <-l.leading:
					acquired.Add(1)
				case <-time.After(tryWindow):
					held.Add(1)
				}
				l.stop()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("acquired %d\nheld %d\nwall_us %d\n", acquired.Load(), held.Load(), time.Since(start).Microseconds())
}

func hold(cs *kubernetes.Clientset, issues int) {
	leases := make([]*lease, issues)
	for i := range issues {
		leases[i] = elect(cs, fmt.Sprintf("hold-%d", i))
	}
	for _, l := range leases {
		<-l.leading
	}
	fmt.Println("held")
	// Hold until the driver closes stdin (or kills us).
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	var wg sync.WaitGroup
	for _, l := range leases {
		wg.Add(1)
		go func() { defer wg.Done(); l.stop() }()
	}
	wg.Wait()
}

func waitFor(cs *kubernetes.Clientset, issue string) {
	l := elect(cs, issue)
	<-l.leading
	fmt.Println("acquired")
	l.stop()
}
