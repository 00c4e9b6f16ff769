package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/userspace/admin"
)

// servicePool is the POOL cell of a service: its pool, or "(routes)" for
// an http service that sends everything through its routes.
func servicePool(s admin.Service) string {
	if s.Pool == "" && len(s.Routes) > 0 {
		return "(routes)"
	}
	return s.Pool
}

// serviceBackends is the BACKENDS cell of a service: addresses getting
// new flows out of its pool's live ones; "-" for an http service without
// a pool of its own (its routes' pools are in the route table).
func serviceBackends(s admin.Service, live map[string]int) string {
	if s.Pool == "" && len(s.Routes) > 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", s.Backends, live[s.Pool])
}

// writeRoutes lists the routes of the http services that have some: what
// each matches, its pool and the pool's addresses by state (every
// address is in the pool table below).
func writeRoutes(w io.Writer, st admin.Status) error {
	n := 0
	for _, s := range st.Services {
		n += len(s.Routes)
	}
	if n == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w, "SERVICE", "ROUTE", "MATCH", "POOL", "ADDRESSES")
	for _, s := range st.Services {
		for _, r := range s.Routes {
			t.row(s.Name, r.Name, r.Match, r.Pool, routeStates(r))
		}
	}
	return t.flush()
}

// routeStates counts a route's pool addresses by state, in the order of
// the state machine: "2 active, 1 ejected".
func routeStates(r admin.Route) string {
	if r.Backends == nil {
		return "(pool not running)"
	}
	var parts []string
	for _, state := range []string{"active", "draining", "ejected", "removed"} {
		if c := r.Backends[state]; c > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c, state))
		}
	}
	if len(parts) == 0 {
		return "no addresses"
	}
	return strings.Join(parts, ", ")
}

// writeCertificates lists the certificates of the https services: file,
// names and expiry, marked when it is less than 14 days away (the
// agent warns then too) or past.
func writeCertificates(w io.Writer, st admin.Status, now time.Time) error {
	var t *table
	for _, s := range st.Services {
		for _, c := range s.Certificates {
			if t == nil {
				fmt.Fprintln(w)
				t = newTable(w, "SERVICE", "CERTIFICATE", "NAMES", "EXPIRES")
			}
			t.row(s.Name, c.File, strings.Join(c.Names, ","), certExpiry(c.NotAfter, now))
		}
	}
	if t == nil {
		return nil
	}
	return t.flush()
}

// certExpiry is when a certificate expires, with how far away that is.
func certExpiry(at, now time.Time) string {
	left := at.Sub(now)
	when := at.UTC().Format("2006-01-02 15:04Z")
	switch {
	case left <= 0:
		return when + " (EXPIRED " + days(-left) + " ago)"
	case left < certs.RenewWithin:
		return when + " (in " + days(left) + ": RENEW)"
	}
	return when + " (in " + days(left) + ")"
}

// days is d in days, or hours under two days.
func days(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
