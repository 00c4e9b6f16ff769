package backoff

import (
	"testing"
	"time"
)

func constRand(v float64) func() float64 { return func() float64 { return v } }

func TestCeiling(t *testing.T) {
	b := Backoff{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond}
	want := []time.Duration{25, 50, 100, 200, 250, 250}
	for i, w := range want {
		if c := b.Ceiling(i + 1); c != w*time.Millisecond {
			t.Errorf("Ceiling(%d) = %s, want %s", i+1, c, w*time.Millisecond)
		}
	}
	if c := b.Ceiling(10000); c != 250*time.Millisecond {
		t.Errorf("Ceiling(10000) = %s: the cap must hold (no overflow)", c)
	}
	if c := b.Ceiling(0); c != 0 {
		t.Errorf("Ceiling(0) = %s, want 0", c)
	}
	if c := (Backoff{Base: time.Second}).Ceiling(5); c != time.Second {
		t.Errorf("Max 0: Ceiling = %s, want Base", c)
	}
	if c := (Backoff{Base: 3 * time.Second, Max: 5 * time.Second}).Ceiling(2); c != 5*time.Second {
		t.Errorf("Ceiling(2) = %s, want the cap 5s", c)
	}
	if c := (Backoff{}).Delay(3, nil); c != 0 {
		t.Errorf("zero Backoff: Delay = %s, want 0", c)
	}
}

func TestDelayJitter(t *testing.T) {
	tests := []struct {
		name   string
		jitter float64
		r      float64
		want   time.Duration // for Ceiling 8s
	}{
		{"none", 0, 0.7, 8 * time.Second},
		{"full low", 1, 0, 0},
		{"full mid", 1, 0.5, 4 * time.Second},
		{"equal low", 0.5, 0, 4 * time.Second},
		{"equal high", 0.5, 0.75, 7 * time.Second},
		{"tenth low", 0.1, 0, 7200 * time.Millisecond},
		{"tenth high", 0.1, 0.5, 7600 * time.Millisecond},
	}
	for _, tt := range tests {
		b := Backoff{Base: time.Second, Max: time.Minute, Jitter: tt.jitter}
		if got := b.Delay(4, constRand(tt.r)); got != tt.want {
			t.Errorf("%s: Delay(4) = %s, want %s", tt.name, got, tt.want)
		}
	}
	// The global source stays within the bounds.
	b := Backoff{Base: time.Second, Max: time.Minute, Jitter: 0.5}
	for range 1000 {
		if d := b.Delay(2, nil); d < time.Second || d >= 2*time.Second {
			t.Fatalf("Delay(2) = %s outside [1s, 2s)", d)
		}
	}
}

func TestValidate(t *testing.T) {
	good := Backoff{Base: time.Millisecond, Max: time.Second, Jitter: 1}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, b := range []Backoff{
		{Base: 0, Max: time.Second},
		{Base: time.Second, Max: time.Millisecond},
		{Base: time.Second, Max: time.Second, Jitter: 1.5},
		{Base: time.Second, Max: time.Second, Jitter: -0.1},
	} {
		if b.Validate() == nil {
			t.Errorf("%+v: no error", b)
		}
	}
}
