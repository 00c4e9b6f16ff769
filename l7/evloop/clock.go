package evloop

import "time"

// A group's loops keep time on the monotonic clock: nanoseconds since the
// group started (its epoch, a time.Time that carries a monotonic
// reading). Deadlines and timers are such instants, so a step of the wall
// clock (NTP's first sync after a boot, a VM resumed, `date -s`) neither
// fires every deadline at once (a step forward: each kept-alive
// connection's request cut, each idle one closed) nor holds them back by
// the size of the step (a step back: a stalled backend or a slow client
// kept that much longer) — as Go's own net package, nginx and HAProxy
// keep their timers. 0 stays "no deadline".

// now is the group's clock: nanoseconds since its epoch.
func (g *Group) now() int64 { return int64(time.Since(g.epoch)) }

// A loop reads the clock once per turn (after epoll_wait returns, and
// again after its tasks ran, for the timers), as nginx's event loop caches
// its time: the code its tasks run takes that reading for deadlines and
// timeouts instead of reading the clock at each step (a clock read costs
// ~40 ns in a VM and a request made a dozen). The reading is behind the
// true time by what ran since in the turn (the tasks before the caller's:
// microseconds, a few milliseconds under a pile of ready connections) —
// a deadline set from it comes that much early, an expiry is seen that
// much late. Intervals the access log shows are measured with time.Now.

// turnNow is the group's clock as of the caller's loop's turn when the
// caller runs as one of the group's tasks (hint: the loop it likely is,
// see currentFrom); the clock read now otherwise.
func (g *Group) turnNow(hint *Loop) int64 {
	if l := g.currentFrom(hint); l != nil {
		return l.turn
	}
	return g.now()
}

// Now is the time of the current turn of t's loop when the caller runs as
// t (see turnNow); time.Now() otherwise (t nil, or another goroutine). Its
// monotonic reading is exact to the turn; its wall-clock reading is the
// group's start plus the monotonic time since, which a step of the wall
// clock since then leaves behind: for deadlines and intervals, not dates.
func (t *Task) Now() time.Time {
	if t.current() {
		return t.l.turnTime()
	}
	return time.Now()
}

// Now is the time of the current turn when the caller runs as a task of
// c's group (see Task.Now); time.Now() otherwise.
func (c *Conn) Now() time.Time {
	if l := c.g.currentFrom(c.loop.Load()); l != nil {
		return l.turnTime()
	}
	return time.Now()
}

// turnTime is l's turn as a time.Time (on l's thread only).
func (l *Loop) turnTime() time.Time { return l.g.epoch.Add(time.Duration(l.turn)) }

// at is t on the group's clock: 0 for the zero Time (no deadline), at
// least 1 for any other (an instant before the epoch is past all the
// same). t's monotonic reading is used when it has one (a time made from
// time.Now, as deadlines are); one without (time.Unix) is placed by the
// wall clock as it reads now.
func (g *Group) at(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(int64(t.Sub(g.epoch)), 1)
}

// after is d from now on the group's clock.
func (g *Group) after(d time.Duration) int64 {
	return max(g.now()+int64(min(d, time.Duration(1<<62))), 1)
}
