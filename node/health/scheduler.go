package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ferryhq/ferry/api"
	"github.com/ferryhq/ferry/node/routing"
	"github.com/ferryhq/ferry/resource"
)

// Defaults of SchedulerConfig.
const (
	DefaultInterval    = 60 * time.Second
	DefaultConcurrency = 4
	// maxPoll is the longest the scheduler waits before looking at the catalog again for new and
	// changed resources (besides Kick).
	maxPoll = 10 * time.Second
)

// ErrUnknownResource is returned for a name the catalog does not hold.
var ErrUnknownResource = errors.New("no such resource")

// ErrNotCandidate is returned (wrapped, with the reason) by Check for a resource this node is not
// a candidate for (node/routing): it does not check it; the candidates do.
var ErrNotCandidate = errors.New("this node is not a candidate for the resource")

// SchedulerConfig configures a Scheduler.
type SchedulerConfig struct {
	Checker *Checker
	// List returns every resource of the catalog.
	List func(ctx context.Context) ([]resource.Resource, error)
	// Interval between two checks of a resource; default DefaultInterval.
	Interval time.Duration
	// Concurrency bounds the checks running at once; default DefaultConcurrency.
	Concurrency int
	// Observe, if set, is called after every check (metrics).
	Observe func(h api.Health)
	// Self, if set, returns this node as node/routing sees it (its ID, name, proxy cluster and tags,
	// as the catalog has them now); it is asked once per round. The scheduler then checks only the
	// resources the node is a candidate for (routing.Serves), and results carry the node's ID and
	// name. nil: every resource is checked (a node without a catalog record, tests).
	Self func(ctx context.Context) (routing.Node, error)
	// Store, if set, keeps a result where every node reads it (the catalog: one row per node and
	// resource). It is called after every check that was not cut short.
	Store func(ctx context.Context, r resource.Resource, h api.Health) error
	// Forget, if set, removes this node's stored result of r: the node is no longer a candidate
	// for it. It is called once per resource that stops being served (and at the first round for
	// every resource not served, to clear what an earlier run left).
	Forget func(ctx context.Context, r resource.Resource) error
	Logger *slog.Logger
}

// Scheduler checks every resource this node is a candidate for (SchedulerConfig.Self) on creation
// (Kick, or at the latest 10 s later), on change (a resource whose catalog entry differs from the
// one last checked), on demand (Check) and every Interval, at most Concurrency at once, keeps the
// last result of each in memory and hands it to SchedulerConfig.Store.
type Scheduler struct {
	cfg  SchedulerConfig
	log  *slog.Logger
	sem  chan struct{}
	kick chan struct{}

	mu      sync.Mutex
	entries map[string]*entry
	// notServed holds, by name, the resources this node is not a candidate for, with the reason.
	notServed map[string]string
	self      routing.Node // as of the last round or Check

	wg     sync.WaitGroup
	cancel context.CancelFunc
}

type entry struct {
	fp      string // the catalog entry last checked (JSON)
	last    api.Health
	running bool
}

// NewScheduler returns a Scheduler; Start runs it.
func NewScheduler(cfg SchedulerConfig) *Scheduler {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Scheduler{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "health"),
		sem:       make(chan struct{}, cfg.Concurrency),
		kick:      make(chan struct{}, 1),
		entries:   make(map[string]*entry),
		notServed: make(map[string]string),
	}
}

// Start runs the scheduler until ctx ends or Close is called.
func (s *Scheduler) Start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	poll := min(s.cfg.Interval, maxPoll)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			s.round(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-s.kick:
			}
		}
	}()
}

// Close stops the scheduler and waits for running checks to end.
func (s *Scheduler) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

// Kick makes the scheduler look at the catalog now (after a resource was added or changed).
func (s *Scheduler) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func fingerprint(r resource.Resource) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// round starts a check for every resource that is new, changed or due, and forgets deleted ones.
func (s *Scheduler) round(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	rs, err := s.cfg.List(lctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("health: list resources", "err", err)
		}
		return
	}
	self, err := s.selfNode(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("health: read this node's record", "err", err)
		}
		return
	}
	now := time.Now()
	seen := make(map[string]bool, len(rs))
	var forget []resource.Resource
	s.mu.Lock()
	defer func() {
		s.mu.Unlock()
		s.forget(ctx, forget)
	}()
	s.self = self
	for _, r := range rs {
		seen[r.Name] = true
		if why, ok := s.serves(r, self); !ok {
			if _, known := s.notServed[r.Name]; !known {
				forget = append(forget, r)
			}
			s.notServed[r.Name] = why
			if e := s.entries[r.Name]; e != nil && !e.running {
				delete(s.entries, r.Name)
			}
			continue
		}
		delete(s.notServed, r.Name)
		e := s.entries[r.Name]
		if e == nil {
			e = &entry{last: notChecked(r.Name)}
			s.entries[r.Name] = e
		}
		fp := fingerprint(r)
		if e.running || (e.fp == fp && e.last.Checked && now.Sub(e.last.Time) < s.cfg.Interval) {
			continue
		}
		e.running = true
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.run(ctx, r, fp)
		}()
	}
	for name, e := range s.entries {
		if !seen[name] && !e.running {
			delete(s.entries, name)
		}
	}
	for name := range s.notServed {
		if !seen[name] {
			delete(s.notServed, name)
		}
	}
}

// selfNode is this node as of now (Self), or an empty node when there is no Self.
func (s *Scheduler) selfNode(ctx context.Context) (routing.Node, error) {
	if s.cfg.Self == nil {
		return routing.Node{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.cfg.Self(ctx)
}

// serves reports whether self is a candidate for r, or why not. Without Self every resource is
// served.
func (s *Scheduler) serves(r resource.Resource, self routing.Node) (string, bool) {
	if s.cfg.Self == nil {
		return "", true
	}
	ok, why, err := routing.Serves(r.ProxyClusterID, r.EgressFilter, self)
	if err != nil {
		return fmt.Sprintf("its egress filter %q does not parse: %v", r.EgressFilter, err), false
	}
	if !ok && why == "" {
		why = "node " + self.Name + " is not a candidate"
	}
	return why, ok
}

// forget removes this node's stored results of rs (Forget), each bounded.
func (s *Scheduler) forget(ctx context.Context, rs []resource.Resource) {
	if s.cfg.Forget == nil {
		return
	}
	for _, r := range rs {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.cfg.Forget(fctx, r)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("health: forget the result of a resource this node no longer serves", "resource", r.Name, "err", err)
		}
	}
}

// run checks r once a concurrency slot is free and stores the result.
func (s *Scheduler) run(ctx context.Context, r resource.Resource, fp string) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		s.mu.Lock()
		if e := s.entries[r.Name]; e != nil {
			e.running = false
		}
		s.mu.Unlock()
		return
	}
	h := s.cfg.Checker.Check(ctx, r, nil)
	<-s.sem
	s.store(ctx, r, fp, h, true, ctx.Err() != nil)
}

// store keeps h as r's last result and hands it to Store; scheduled says the check was the
// scheduler's own (which clears the entry's running mark), cancelled that it was cut short by
// shutdown (not kept).
func (s *Scheduler) store(ctx context.Context, r resource.Resource, fp string, h api.Health, scheduled, cancelled bool) {
	name := r.Name
	s.mu.Lock()
	h.NodeID, h.NodeName = s.self.ID, s.self.Name
	e := s.entries[name]
	if e == nil {
		e = &entry{}
		s.entries[name] = e
	}
	if scheduled {
		e.running = false
	}
	if cancelled {
		s.mu.Unlock()
		return
	}
	prev := e.last
	e.fp, e.last = fp, h
	s.mu.Unlock()
	if s.cfg.Store != nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := s.cfg.Store(sctx, r, h); err != nil {
			s.log.Warn("health: store the result in the catalog", "resource", name, "err", err)
		}
		cancel()
	}
	if prev.State != h.State || !prev.Checked {
		s.log.Info("resource health", "resource", name, "state", h.State, "failed_step", h.FailedStep, "error", h.Error, "hint", h.Hint)
	}
	if s.cfg.Observe != nil {
		s.cfg.Observe(h)
	}
}

// Check runs r's check now (waiting for a concurrency slot) and returns its result, which also
// becomes r's last result (and is stored). A resource this node is not a candidate for is not
// checked: the error wraps ErrNotCandidate and says why.
func (s *Scheduler) Check(ctx context.Context, name string) (api.Health, error) {
	rs, err := s.cfg.List(ctx)
	if err != nil {
		return api.Health{}, fmt.Errorf("health check %s: %w", name, err)
	}
	for _, r := range rs {
		if r.Name != name {
			continue
		}
		self, err := s.selfNode(ctx)
		if err != nil {
			return api.Health{}, fmt.Errorf("health check %s: read this node's record: %w", name, err)
		}
		s.mu.Lock()
		s.self = self
		s.mu.Unlock()
		if why, ok := s.serves(r, self); !ok {
			return api.Health{}, fmt.Errorf("health check %s on node %s: %w: %s", name, self.Name, ErrNotCandidate, why)
		}
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return api.Health{}, fmt.Errorf("health check %s: wait for a free check slot: %w", name, ctx.Err())
		}
		h := s.cfg.Checker.Check(ctx, r, nil)
		<-s.sem
		s.store(ctx, r, fingerprint(r), h, false, ctx.Err() != nil)
		h.NodeID, h.NodeName = self.ID, self.Name
		return h, nil
	}
	return api.Health{}, fmt.Errorf("health check %s: %w", name, ErrUnknownResource)
}

// Last returns this node's last result of resource name: unhealthy and not checked yet when no
// check has finished (or the node is not a candidate for it).
func (s *Scheduler) Last(name string) api.Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[name]; e != nil {
		return e.last
	}
	return notChecked(name)
}

func notChecked(name string) api.Health {
	return api.Health{Resource: name, State: api.HealthUnhealthy, Error: "not checked yet"}
}
