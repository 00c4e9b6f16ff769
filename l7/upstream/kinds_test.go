package upstream

import (
	"context"
	"testing"
	"time"

	"github.com/sluicelb/sluice/l7/evloop"
)

// Sockets keep with their kind of caller: a goroutine never gets a
// loop's socket (it would wait on it with poll(2)): it dials its own; an
// event loop's task takes the runtime's socket a goroutine gave back and
// moves it to its loop rather than dial.
func TestPoolsKeepSocketKinds(t *testing.T) {
	s := newEchoServer(t)
	p := New(Options{})
	defer p.Close()
	g, err := evloop.NewGroup(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	inTask := func(fn func(ctx context.Context)) {
		done := make(chan struct{})
		g.Pick().Go(func(ctx context.Context) {
			defer close(done)
			fn(ctx)
		})
		<-done
	}

	// A goroutine's socket, given back; a task takes it, on its loop now.
	c1 := get(t, p, s.addr)
	if c1.ev != nil {
		t.Fatal("a goroutine's dial gave a loop's socket")
	}
	p.Put(c1, "")
	inTask(func(ctx context.Context) {
		c, err := p.Get(ctx, s.addr, "", "answer-1", time.Now().Add(time.Second))
		if err != nil {
			t.Error(err)
			return
		}
		if c != c1 || c.ev == nil {
			t.Errorf("the task got %p (loop socket %v), want %p moved to its loop", c, c.ev != nil, c1)
		}
		p.Put(c, "")
	})
	if st := p.Stats(s.addr); st.Dialled != 1 || st.Reused != 1 || st.Idle != 1 {
		t.Fatalf("after the task: %+v, want 1 dial, 1 reuse, 1 idle", st)
	}
	// A goroutine now finds only a loop's socket idle: it dials.
	c2 := get(t, p, s.addr)
	if c2 == c1 || c2.ev != nil {
		t.Fatalf("the goroutine got %p (loop socket %v), want a socket of its own", c2, c2.ev != nil)
	}
	p.Put(c2, "")
	if st := p.Stats(s.addr); st.Dialled != 2 || st.Idle != 2 {
		t.Fatalf("after the goroutine: %+v, want 2 dials, 2 idle", st)
	}
	// Each takes its own kind from now on.
	inTask(func(ctx context.Context) {
		c, err := p.Get(ctx, s.addr, "", "answer-1", time.Now().Add(time.Second))
		if err != nil {
			t.Error(err)
			return
		}
		if c != c1 {
			t.Errorf("the task got %p, want its loop's %p", c, c1)
		}
		p.Put(c, "")
	})
	if c := get(t, p, s.addr); c != c2 {
		t.Fatalf("the goroutine got %p, want its own %p", c, c2)
	}
}
