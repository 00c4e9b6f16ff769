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
