// Package evloop serves connections from per-CPU event loops instead of a
// goroutine each on the Go runtime's poller.
//
// A Group holds one Loop per processor: a goroutine locked to its own OS
// thread with an epoll set of its own. The code that serves a connection
// stays ordinary blocking Go, but it runs as a Task: a coroutine of its
// loop (iter.Pull), switched to and from directly on the loop's thread,
// without the scheduler. A read or write on a Conn that would block
// (EAGAIN) parks the task — it yields back to its loop — and the loop
// resumes it when epoll reports the socket ready, its deadline passes, or
// another goroutine closes the connection or moves its deadline. One
// epoll_wait serves every ready connection of a loop at once, and no
// goroutine is parked and woken through the scheduler per read: that is
// the cost (context switches, futex wake-ups, a read that finds nothing
// before every park) the Go poller's goroutine-per-connection model pays
// on every request (docs/l7.md, "Event loops").
//
// A Conn's file descriptor is registered with its loop's epoll only, never
// with the Go runtime's poller (Adopt takes it out of a net.Conn). A Conn
// may still be read and written from a goroutine that is not one of its
// loop's tasks (it then waits with poll(2) on its own thread): correct,
// but meant for rare paths only. Code running in a task must not block
// for long outside a Conn or this package's waits (Sleep, Block): the
// whole loop would wait with it.
package evloop

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Group is a set of loops, one per processor, that serve tasks.
type Group struct {
	loops  []*Loop
	next   atomic.Uint32
	log    *slog.Logger
	hold   bool
	closed atomic.Bool
	wg     sync.WaitGroup
	epoch  time.Time // the origin of the loops' clock (clock.go)
}

// Options configure a Group.
type Options struct {
	// Loops is the number of loops (<= 0: one per GOMAXPROCS).
	Loops int
	// HoldProcs makes each loop keep its processor (the runtime's P)
	// while it sleeps in epoll_wait, a raw system call the runtime does
	// not see: no hand-off of the processor to another thread when the
	// loop sleeps, no thread to wake and no processor to take back when
	// it wakes (the futex wake-ups, sysmon's retakes and context switches
	// a blocking system call costs the loop on every sleep). Only for a
	// group whose loops leave at least one processor to the rest of the
	// program: GOMAXPROCS above Loops (see Serve). A sleep is bounded
	// (maxHeldWait) and ends early on the signal with which the runtime
	// preempts a long-running goroutine (for the collector's
	// stop-the-world, or sysmon's fairness), so the loop's goroutine stays
	// preemptible. A loop idle for longer (maxHeldWait) sleeps on with
	// the processor given back, as without HoldProcs.
	HoldProcs bool
	Log       *slog.Logger

	epoch time.Time // the clock's origin when set (tests: a wall clock off)
}

// maxHeldWait is how long a loop that holds its processor sleeps with it:
// a loop with nothing to do for longer gives it back until its next
// event (busy loops keep theirs; idle ones leave the processors to the
// goroutines). It also bounds how long a stop-the-world would wait for a
// sleeping loop if preemption signals were off
// (GODEBUG=asyncpreemptoff=1).
const maxHeldWait = 1 // ms

// NewGroup starts n loops (n <= 0: one per GOMAXPROCS) that give their
// processors back while they sleep.
func NewGroup(n int, log *slog.Logger) (*Group, error) {
	return Start(Options{Loops: n, Log: log})
}

// Start starts a group of loops.
func Start(o Options) (*Group, error) {
	n, log := o.Loops, o.Log
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.HoldProcs && n >= runtime.GOMAXPROCS(0) {
		return nil, fmt.Errorf("%d loops holding processors leave none of GOMAXPROCS %d to the rest of the program", n, runtime.GOMAXPROCS(0))
	}
	g := &Group{log: log, hold: o.HoldProcs, epoch: o.epoch}
	if g.epoch.IsZero() {
		g.epoch = time.Now()
	}
	for i := 0; i < n; i++ {
		l, err := newLoop(g, i)
		if err != nil {
			g.Close()
			return nil, err
		}
		g.loops = append(g.loops, l)
		ready := make(chan struct{})
		g.wg.Go(func() { l.run(ready) })
		<-ready
	}
	return g, nil
}

// Close stops the loops once their inboxes are run; tasks still parked
// then are abandoned (close their connections first). It waits for the
// loops' threads to end.
func (g *Group) Close() {
	if g.closed.Swap(true) {
		return
	}
	for _, l := range g.loops {
		l.post(func() { l.stopping = true })
	}
	g.wg.Wait()
}

// ErrStuck is Ping's error for a loop that did not answer in time.
var ErrStuck = errors.New("event loop stuck")

// Ping has every loop run a no-op and waits up to timeout for all of
// them: a loop whose thread is held (a task that blocks it, a bug) serves
// none of its connections, and says nothing else. It returns an error
// wrapping ErrStuck naming the loops that did not answer; nil for a
// closed group.
func (g *Group) Ping(timeout time.Duration) error {
	if g.closed.Load() {
		return nil
	}
	done := make([]chan struct{}, len(g.loops))
	for i, l := range g.loops {
		c := make(chan struct{})
		done[i] = c
		l.post(func() { close(c) })
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	var stuck []int
	for i, c := range done {
		select {
		case <-c:
			continue
		case <-t.C:
		}
		// Past the timeout: the rest are checked without waiting.
		for j := i; j < len(done); j++ {
			select {
			case <-done[j]:
			default:
				stuck = append(stuck, j)
			}
		}
		break
	}
	if len(stuck) == 0 || g.closed.Load() {
		return nil
	}
	return fmt.Errorf("%w: loop %v ran nothing for %s", ErrStuck, stuck, timeout)
}

// Pick is the loop a new connection goes to: the one with fewer tasks of
// two taken in turn.
func (g *Group) Pick() *Loop {
	if len(g.loops) == 1 {
		return g.loops[0]
	}
	i := g.next.Add(1)
	a, b := g.loops[int(i)%len(g.loops)], g.loops[int(i+1)%len(g.loops)]
	if b.tasks.Load() < a.tasks.Load() {
		return b
	}
	return a
}

// Loop is one event loop: a goroutine locked to an OS thread, its epoll
// set, its tasks and their timers.
type Loop struct {
	g    *Group
	idx  int
	epfd int
	evfd int

	// running is the task the loop's thread runs now (nil: the loop itself).
	running *Task
	// runningG is running's goroutine (getg; 0: none), for callers on
	// other goroutines to tell whether they are it (Group.current).
	runningG atomic.Uintptr
	tasks    atomic.Int64

	mu sync.Mutex
	// slots are the connections registered with epfd, by the index in
	// their epoll token (a slice, not a map: dispatch finds each event's
	// connection with an index, no hash); free are the empty ones.
	// nconns counts those in use.
	slots    []slot
	free     []uint32
	nconns   int
	inbox    []func()
	spare    []func()
	sleeping atomic.Bool

	// turn is the group's clock as of this turn of the loop (clock.go):
	// set and read on the loop's thread only.
	turn     int64
	timers   timerHeap
	stopping bool
	events   []unix.EpollEvent
	ready    []*Task
	watched  []*Conn
}

// evToken is the epoll data of the loop's eventfd.
const evToken = 0

func newLoop(g *Group, idx int) (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, evToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return &Loop{g: g, idx: idx, epfd: epfd, evfd: evfd, events: make([]unix.EpollEvent, 128)}, nil
}

// slot is a place in a loop's table. gen counts its uses: a connection's
// token is its slot's index and gen, so that an event read for one that
// left (unregistered, closed) is not taken for the next in its place.
type slot struct {
	c   *Conn
	gen uint32
}

// A token is a slot's index + 1 (0 is the eventfd's) and its gen.
func slotToken(i, gen uint32) uint64 { return uint64(i+1) | uint64(gen)<<32 }

// connLocked is the connection of an event's token, or nil (under mu).
func (l *Loop) connLocked(tok uint64) *Conn {
	i := uint32(tok) - 1
	if int(i) >= len(l.slots) {
		return nil
	}
	if s := &l.slots[i]; s.c != nil && s.gen == uint32(tok>>32) {
		return s.c
	}
	return nil
}

// addLocked places c in a slot and returns its token (under mu).
func (l *Loop) addLocked(c *Conn) uint64 {
	var i uint32
	if n := len(l.free); n > 0 {
		i, l.free = l.free[n-1], l.free[:n-1]
	} else {
		i = uint32(len(l.slots))
		l.slots = append(l.slots, slot{})
	}
	s := &l.slots[i]
	s.c = c
	s.gen++
	l.nconns++
	tok := slotToken(i, s.gen)
	c.token.Store(tok)
	return tok
}

// removeLocked frees c's slot when c has one in l (under mu).
func (l *Loop) removeLocked(c *Conn) {
	tok := c.token.Load()
	i := uint32(tok) - 1
	if tok == 0 || int(i) >= len(l.slots) || l.slots[i].c != c || l.slots[i].gen != uint32(tok>>32) {
		return // not registered here (moved, or never)
	}
	l.slots[i].c = nil
	l.free = append(l.free, i)
	l.nconns--
	c.token.CompareAndSwap(tok, 0)
}

func setToken(ev *unix.EpollEvent, id uint64) {
	ev.Fd = int32(uint32(id))
	ev.Pad = int32(uint32(id >> 32))
}

func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// Go starts fn as a task of l (from any goroutine). fn's context carries
// the task (TaskFrom), for the waits of this package.
func (l *Loop) Go(fn func(ctx context.Context)) {
	l.tasks.Add(1)
	l.post(func() { l.start(fn) })
}

// start makes fn a coroutine of the loop and runs it until it parks.
func (l *Loop) start(fn func(ctx context.Context)) {
	t := &Task{l: l}
	t.tm = timer{idx: -1, task: t}
	t.ctx = context.WithValue(context.Background(), taskKey{}, t)
	seq := func(yield func(struct{}) bool) {
		t.yield = yield
		me := getg() // the coroutine's goroutine: it runs t and nothing else
		t.g.Store(me)
		l.runningG.Store(me)
		defer func() {
			if v := recover(); v != nil {
				l.g.log.Error("panic in an event loop task", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			}
		}()
		fn(t.ctx)
	}
	t.next, t.stop = iter.Pull(seq)
	l.resume(t)
}

// resume switches to t until it parks again or ends.
func (l *Loop) resume(t *Task) {
	prev, prevG := l.running, l.runningG.Load()
	l.running = t
	l.runningG.Store(t.g.Load()) // 0 before its first run: seq stores it
	t.parked = false
	_, alive := t.next()
	l.running = prev
	l.runningG.Store(prevG)
	if !alive {
		t.done = true
		l.tasks.Add(-1)
		l.timers.remove(&t.tm)
	}
}

// post runs fn on the loop's thread (from any goroutine), waking the loop
// when it sleeps in epoll_wait.
func (l *Loop) post(fn func()) {
	l.mu.Lock()
	l.inbox = append(l.inbox, fn)
	l.mu.Unlock()
	if l.sleeping.Load() {
		l.wake()
	}
}

func (l *Loop) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

// run is the loop's goroutine.
func (l *Loop) run(ready chan<- struct{}) {
	runtime.LockOSThread()
	// The thread is never unlocked: it ends with the loop.
	l.turn = l.g.now()
	close(ready)
	defer func() {
		unix.Close(l.epfd)
		unix.Close(l.evfd)
	}()
	for {
		l.runInbox()
		if l.stopping {
			return
		}
		l.turn = l.g.now()
		timeout := l.timers.waitMillis(l.turn)
		n := l.poll(0)
		if n == 0 && timeout != 0 {
			// Nothing ready: sleep in epoll_wait, unless a post came in
			// (unless the group holds its processors, the runtime may
			// give the processor away meanwhile).
			l.sleeping.Store(true)
			l.mu.Lock()
			pending := len(l.inbox) > 0
			l.mu.Unlock()
			if !pending {
				n = l.poll(timeout)
				l.turn = l.g.now() // after a sleep, time to read again
			}
			l.sleeping.Store(false)
		}
		l.dispatch(n)
		l.turn = l.g.now()
		l.fireTimers(l.turn)
	}
}

// poll waits up to timeout ms (-1: forever) for events.
func (l *Loop) poll(timeout int) int {
	for {
		var n int
		var err error
		switch {
		case timeout == 0:
			n, err = epollWaitRaw(l.epfd, l.events, 0)
		case l.g.hold:
			held := timeout
			if held < 0 || held > maxHeldWait {
				held = maxHeldWait
			}
			n, err = epollWaitRaw(l.epfd, l.events, held)
			if err == unix.EINTR {
				// A signal, maybe the runtime's preemption request: go
				// round the loop (a function call lets it preempt us).
				return 0
			}
			if err == nil && n == 0 && held != timeout {
				// Idle that long: sleep on without the processor, for the
				// rest of the program (goroutines may need it more).
				if timeout > 0 {
					timeout -= held
				}
				n, err = unix.EpollWait(l.epfd, l.events, timeout)
			}
		default:
			n, err = unix.EpollWait(l.epfd, l.events, timeout)
		}
		if err == nil {
			return n
		}
		if err != unix.EINTR {
			l.g.log.Error("epoll_wait", "error", err)
			time.Sleep(10 * time.Millisecond)
			return 0
		}
	}
}

// dispatch resumes the tasks the n events wake, and runs the watches of
// connections that became readable while nobody reads them.
func (l *Loop) dispatch(n int) {
	if n == 0 {
		return
	}
	l.ready, l.watched = l.ready[:0], l.watched[:0]
	wakeup := false
	l.mu.Lock()
	for i := range n {
		ev := &l.events[i]
		id := token(ev)
		if id == evToken {
			wakeup = true
			continue
		}
		c := l.connLocked(id)
		if c == nil {
			continue // closed or moved since
		}
		if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.hup.Store(true)
		}
		if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.readable.Store(true)
			if t := c.rwait; t != nil {
				l.ready = append(l.ready, t)
			} else if c.watch != nil {
				l.watched = append(l.watched, c)
			}
		}
		if ev.Events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			if t := c.wwait; t != nil {
				l.ready = append(l.ready, t)
			}
		}
	}
	l.mu.Unlock()
	if wakeup {
		var buf [8]byte
		_, _ = unix.Read(l.evfd, buf[:])
	}
	for _, c := range l.watched {
		if c.watch != nil && c.rwait == nil {
			c.watch()
		}
	}
	// A task may be here twice, or resumed already and parked in another
	// wait: every wait tolerates a spurious wake (it checks again).
	for _, t := range l.ready {
		if t.parked && !t.done {
			l.resume(t)
		}
	}
	clear(l.ready)
	clear(l.watched)
}

// runInbox runs what other goroutines posted.
func (l *Loop) runInbox() {
	l.mu.Lock()
	fns := l.inbox
	l.inbox, l.spare = l.spare[:0], nil
	l.mu.Unlock()
	for i, fn := range fns {
		fn()
		fns[i] = nil
	}
	l.mu.Lock()
	if l.spare == nil {
		l.spare = fns[:0]
	}
	l.mu.Unlock()
}

// fireTimers resumes the tasks whose wait ended by now.
func (l *Loop) fireTimers(ns int64) {
	for {
		tm := l.timers.first()
		if tm == nil || tm.at > ns {
			return
		}
		l.timers.remove(tm)
		if t := tm.task; t != nil {
			if t.parked && !t.done {
				l.resume(t)
			}
		} else {
			tm.fn()
		}
	}
}

// register adds c to the loop's epoll set (edge-triggered, both ways).
func (l *Loop) register(c *Conn) error {
	l.mu.Lock()
	tok := l.addLocked(c)
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET}
	setToken(&ev, tok)
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.mu.Lock()
		l.removeLocked(c)
		l.mu.Unlock()
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// unregister takes c out of the loop's epoll set (the fd stays open).
func (l *Loop) unregister(c *Conn) {
	l.mu.Lock()
	l.removeLocked(c)
	l.mu.Unlock()
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
}

// forget drops c from the loop's table (its fd is being closed, which
// takes it out of the epoll set).
func (l *Loop) forget(c *Conn) {
	l.mu.Lock()
	l.removeLocked(c)
	l.mu.Unlock()
}

// Task is a coroutine of a loop: the code serving one connection.
type Task struct {
	l       *Loop
	ctx     context.Context
	next    func() (struct{}, bool)
	stop    func()
	yield   func(struct{}) bool
	parked  bool
	done    bool
	tm      timer // the end of the wait (when it has one)
	wakeSeq uint64
	// g is the goroutine that runs the task (getg; 0 until it first runs).
	g atomic.Uintptr
}

type taskKey struct{}

// TaskFrom is the task ctx belongs to (nil outside a task).
func TaskFrom(ctx context.Context) *Task {
	if ctx == nil {
		return nil
	}
	t, _ := ctx.Value(taskKey{}).(*Task)
	return t
}

// LoopOf is the loop of the task ctx belongs to (nil outside a task).
func LoopOf(ctx context.Context) *Loop {
	if t := TaskFrom(ctx); t != nil {
		return t.l
	}
	return nil
}

// InTask is whether the caller runs as the task ctx belongs to.
func InTask(ctx context.Context) bool { return TaskFrom(ctx).current() }

// Context is the task's context (it carries the task).
func (t *Task) Context() context.Context { return t.ctx }

// Loop is the task's loop.
func (t *Task) Loop() *Loop { return t.l }

// current reports whether the caller runs as t (t is running on its
// loop's thread).
func (t *Task) current() bool { return t != nil && t.g.Load() == getg() && t.l.running == t }

// park yields to the loop until something resumes t. until (on the
// group's clock, 0: none) ends the wait at the latest.
func (t *Task) park(until int64) {
	t.parked = true
	t.wakeSeq++
	if until != 0 {
		t.tm.at = until
		t.l.timers.add(&t.tm)
	}
	if !t.yield(struct{}{}) {
		// The loop stopped the coroutine: nothing resumes it again.
		runtime.Goexit()
	}
	t.parked = false
	t.l.timers.remove(&t.tm)
}

// wakeFromAnywhere resumes t (parked in the wait seq) from any goroutine.
func (t *Task) wakeFromAnywhere(seq uint64) {
	t.l.post(func() {
		if t.parked && !t.done && t.wakeSeq == seq {
			t.l.resume(t)
		}
	})
}

// Sleep waits d or until ctx ends (false then). In a task it parks the
// task; elsewhere it is an ordinary timer wait.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := TaskFrom(ctx)
	if !t.current() {
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-tm.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if ctx.Err() != nil {
		return false
	}
	g := t.l.g
	until := g.after(d)
	seq := t.wakeSeq + 1
	stop := context.AfterFunc(ctx, func() { t.wakeFromAnywhere(seq) })
	defer stop()
	for g.now() < until {
		if ctx.Err() != nil {
			return false
		}
		t.park(until)
		seq = t.wakeSeq + 1
	}
	return ctx.Err() == nil
}

// Block runs fn, which may block (a channel, a lock held long), on a
// goroutine of its own while the task is parked, so the loop serves its
// other tasks meanwhile; outside a task it just calls fn.
func Block(ctx context.Context, fn func()) {
	t := TaskFrom(ctx)
	if !t.current() {
		fn()
		return
	}
	var done atomic.Bool
	seq := t.wakeSeq + 1
	go func() {
		fn()
		done.Store(true)
		t.wakeFromAnywhere(seq)
	}()
	for !done.Load() {
		t.park(0)
	}
}

// Go starts fn as another task of the loop ctx's task runs on (a second
// direction of a tunnel, say); outside a task, as a goroutine. wg counts
// it.
func Go(ctx context.Context, wg *sync.WaitGroup, fn func()) {
	t := TaskFrom(ctx)
	if t == nil {
		wg.Go(fn)
		return
	}
	wg.Add(1)
	t.l.Go(func(context.Context) {
		defer wg.Done()
		fn()
	})
}

// Wait waits for wg; in a task, without blocking the loop.
func Wait(ctx context.Context, wg *sync.WaitGroup) {
	Block(ctx, wg.Wait)
}

// timer is an entry of a loop's timer heap: the end of a task's wait,
// or a function to run (AfterFunc).
type timer struct {
	at   int64 // on the group's clock (clock.go)
	idx  int   // in the heap; -1: not in it
	task *Task
	fn   func()
}

// Timer is a function a loop runs at a time (AfterFunc).
type Timer struct {
	l  *Loop
	tm timer
}

// AfterFunc runs fn on the loop's thread after d. Only the loop's tasks
// may call it (and Stop).
func (l *Loop) AfterFunc(d time.Duration, fn func()) *Timer {
	t := &Timer{l: l, tm: timer{idx: -1, fn: fn}}
	t.Reset(d)
	return t
}

// Reset makes the timer run fn d from now (again).
func (t *Timer) Reset(d time.Duration) {
	t.tm.at = t.l.g.after(d)
	t.l.timers.add(&t.tm)
}

// Stop keeps fn from running; false when it ran already or was stopped.
func (t *Timer) Stop() bool {
	if t.tm.idx < 0 {
		return false
	}
	t.l.timers.remove(&t.tm)
	return true
}

// timerHeap orders timers by when they end.
type timerHeap []*timer

func (h *timerHeap) first() *timer {
	if len(*h) == 0 {
		return nil
	}
	return (*h)[0]
}

// waitMillis is how long epoll_wait may sleep: until the first timer
// (rounded up to a millisecond), -1 without one.
func (h *timerHeap) waitMillis(now int64) int {
	t := h.first()
	if t == nil {
		return -1
	}
	d := t.at - now
	if d <= 0 {
		return 0
	}
	ms := (d + int64(time.Millisecond) - 1) / int64(time.Millisecond)
	if ms > 1<<30 {
		ms = 1 << 30
	}
	return int(ms)
}

func (h *timerHeap) add(t *timer) {
	if t.idx >= 0 {
		h.fix(t.idx)
		return
	}
	t.idx = len(*h)
	*h = append(*h, t)
	h.up(t.idx)
}

func (h *timerHeap) remove(t *timer) {
	i := t.idx
	if i < 0 {
		return
	}
	last := len(*h) - 1
	if i != last {
		h.swap(i, last)
	}
	(*h)[last] = nil
	*h = (*h)[:last]
	t.idx = -1
	if i != last {
		h.fix(i)
	}
}

func (h *timerHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].at <= h[i].at {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h timerHeap) down(i int) bool {
	start := i
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		m := l
		if r := l + 1; r < len(h) && h[r].at < h[l].at {
			m = r
		}
		if h[i].at <= h[m].at {
			break
		}
		h.swap(i, m)
		i = m
	}
	return i > start
}

// epollWaitRaw waits up to timeout ms outside the runtime's system-call
// bookkeeping: the caller keeps its processor. With timeout 0 it never
// blocks; otherwise only a loop of a group that holds its processors
// calls it.
func epollWaitRaw(epfd int, events []unix.EpollEvent, timeout int) (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(timeout), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// Stats are a group's counts now.
type Stats struct {
	Loops     int
	HoldProcs bool  // the loops keep their processors while they sleep
	Tasks     int64 // running or parked
	Conns     int   // sockets registered with the loops
}

// Stats counts the group's tasks and sockets (none, no loops, for a nil
// group).
func (g *Group) Stats() Stats {
	if g == nil {
		return Stats{}
	}
	st := Stats{Loops: len(g.loops), HoldProcs: g.hold}
	for _, l := range g.loops {
		st.Tasks += l.tasks.Load()
		l.mu.Lock()
		st.Conns += l.nconns
		l.mu.Unlock()
	}
	return st
}
