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
	Logger  *slog.Logger
}

// Scheduler checks every resource on creation (Kick, or at the latest 10 s later), on change (a
// resource whose catalog entry differs from the one last checked), on demand (Check) and every
// Interval, at most Concurrency at once, and keeps the last result of each in memory.
type Scheduler struct {
	cfg  SchedulerConfig
	log  *slog.Logger
	sem  chan struct{}
	kick chan struct{}

	mu      sync.Mutex
	entries map[string]*entry

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
		cfg:     cfg,
		log:     cfg.Logger.With("component", "health"),
		sem:     make(chan struct{}, cfg.Concurrency),
		kick:    make(chan struct{}, 1),
		entries: make(map[string]*entry),
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
	now := time.Now()
	seen := make(map[string]bool, len(rs))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		seen[r.Name] = true
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
	s.store(r.Name, fp, h, true, ctx.Err() != nil)
}

// store keeps h as name's last result; scheduled says the check was the scheduler's own (which
// clears the entry's running mark), cancelled that it was cut short by shutdown (not kept).
func (s *Scheduler) store(name, fp string, h api.Health, scheduled, cancelled bool) {
	s.mu.Lock()
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
	if prev.State != h.State || !prev.Checked {
		s.log.Info("resource health", "resource", name, "state", h.State, "failed_step", h.FailedStep, "error", h.Error, "hint", h.Hint)
	}
	if s.cfg.Observe != nil {
		s.cfg.Observe(h)
	}
}

// Check runs r's check now (waiting for a concurrency slot) and returns its result, which also
// becomes r's last result.
func (s *Scheduler) Check(ctx context.Context, name string) (api.Health, error) {
	rs, err := s.cfg.List(ctx)
	if err != nil {
		return api.Health{}, fmt.Errorf("health check %s: %w", name, err)
	}
	for _, r := range rs {
		if r.Name != name {
			continue
		}
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return api.Health{}, fmt.Errorf("health check %s: wait for a free check slot: %w", name, ctx.Err())
		}
		h := s.cfg.Checker.Check(ctx, r, nil)
		<-s.sem
		s.store(name, fingerprint(r), h, false, ctx.Err() != nil)
		return h, nil
	}
	return api.Health{}, fmt.Errorf("health check %s: %w", name, ErrUnknownResource)
}

// Last returns the last result of resource name: unhealthy and not checked yet when no check has
// finished.
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
