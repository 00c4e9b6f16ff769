package agent

import (
	"context"
	"strings"
	"time"

	"github.com/sluicelb/sluice/l7/certs"
	"github.com/sluicelb/sluice/userspace/admin"
)

// Certificates of the https services: renewed files are loaded without a
// reload, and a certificate about to expire (or expired) is warned of and
// exported, so that a renewal hook that forgot `sluice reload`, or a
// renewal that stopped, is not found out by the clients.
const (
	// fileCheckEvery is how often the certificate files and the access
	// log files are looked at (a stat of each; certificates are read
	// only when they changed).
	fileCheckEvery = 5 * time.Second
	// certWarnEvery spaces the warnings of one certificate, and of the
	// files of a service that cannot be loaded.
	certWarnEvery = 24 * time.Hour
	// certExpiredWarnEvery spaces the errors of an expired certificate.
	certExpiredWarnEvery = time.Hour
)

// watchFiles looks at the files the http services read and write every
// fileCheckEvery until ctx ends: certificates renewed, access logs
// removed or moved away.
func (s *l7Stage) watchFiles(ctx context.Context) {
	t := time.NewTicker(fileCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.checkCertificates(now)
			s.checkUpstreamCAs(now)
			s.accessLogs.reopenGone(s.log)
		}
	}
}

// checkCertificates loads again the certificate files of every https
// service that changed since they were loaded, and warns of those about
// to expire. Under the stage's lock: a reload (sync) does not run at the
// same time.
func (s *l7Stage) checkCertificates(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, cur := range s.services {
		if cur.svc.TLS == nil {
			continue
		}
		loaded, err := cur.srv.RefreshCertificates()
		if err != nil {
			if s.certWarnDue("load "+name, now, certWarnEvery) {
				s.log.Warn("certificate files of an https service changed and cannot be loaded: it goes on serving the certificates it had (checked again every 5s)",
					"service", name, "err", err)
			}
			continue
		}
		if loaded {
			delete(s.certWarned, "load "+name)
			s.log.Info("certificate files changed: loaded again, new handshakes get them", "service", name,
				"certificates", describeCerts(cur.srv.Certificates(), now))
		}
		s.noteCertificates(name, cur, now, loaded)
	}
}

// checkUpstreamCAs reads again the upstream CA file (upstream.ca) of
// every service whose file changed since it was read, for the backend
// connections dialled from then on: a rotated internal CA is trusted
// within seconds, before backends that present certificates of the new
// one fail their handshakes (and get ejected). A file that cannot be
// read keeps the CAs trusted as they were, with a warning (daily).
func (s *l7Stage) checkUpstreamCAs(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, cur := range s.services {
		u := cur.svc.Upstream
		if u == nil || !u.TLS || u.CA == "" {
			continue
		}
		st, err := certs.StampFiles(u.CA)
		if err == nil && st == cur.caStamp {
			continue
		}
		if err == nil {
			err = cur.setUpstreamCA(u, st)
		}
		if err != nil {
			if s.certWarnDue("ca "+name, now, certWarnEvery) {
				s.log.Warn("upstream CA file of an http service changed and cannot be read: backends are verified with the CAs read before (checked again every 5s)",
					"service", name, "ca", u.CA, "err", err)
			}
			continue
		}
		delete(s.certWarned, "ca "+name)
		s.log.Info("upstream CA file changed: read again, new backend connections are verified with it", "service", name, "ca", u.CA)
	}
}

// noteCertificates exports the expiry of service name's certificates
// (fresh: after a load) and warns of those expiring within certs.RenewWithin,
// at most every certWarnEvery each (every certExpiredWarnEvery once
// expired, at level error).
func (s *l7Stage) noteCertificates(name string, cur *l7Service, now time.Time, fresh bool) {
	info := cur.srv.Certificates()
	if fresh && s.metrics != nil {
		expiry := make(map[string]time.Time, len(info))
		for _, c := range info {
			expiry[c.File] = c.NotAfter
		}
		s.metrics.L7.SetCertificates(name, expiry)
	}
	for _, c := range info {
		left := c.NotAfter.Sub(now)
		key := name + " " + c.File + " " + c.NotAfter.String()
		switch {
		case left <= 0:
			if s.certWarnDue("expired "+key, now, certExpiredWarnEvery) {
				s.log.Error("certificate of an https service has expired: clients refuse the handshake; renew it (the files are loaded again when they change)",
					"service", name, "certificate", c.File, "names", strings.Join(c.Names, ","),
					"not_after", c.NotAfter.UTC().Format(time.RFC3339), "expired_for", left.Abs().Round(time.Minute).String())
			}
		case left < certs.RenewWithin:
			if s.certWarnDue("soon "+key, now, certWarnEvery) {
				s.log.Warn("certificate of an https service expires soon: its renewal may have failed (the files are loaded again when they change)",
					"service", name, "certificate", c.File, "names", strings.Join(c.Names, ","),
					"not_after", c.NotAfter.UTC().Format(time.RFC3339), "expires_in", left.Round(time.Minute).String())
			}
		}
	}
}

// certWarnDue is whether the warning key is due (never given, or last
// given every ago); it records it given.
func (s *l7Stage) certWarnDue(key string, now time.Time, every time.Duration) bool {
	if s.certWarned == nil {
		s.certWarned = make(map[string]time.Time)
	}
	if last, ok := s.certWarned[key]; ok && now.Sub(last) < every {
		return false
	}
	s.certWarned[key] = now
	return true
}

// certificates is what service name's certificates say of themselves,
// for status (nil: no such https service running).
func (s *l7Stage) certificates(name string) []admin.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.services[name]
	if !ok {
		return nil
	}
	var out []admin.Certificate
	for _, c := range cur.srv.Certificates() {
		out = append(out, admin.Certificate{File: c.File, Names: c.Names, NotAfter: c.NotAfter})
	}
	return out
}

// describeCerts is each certificate as "file (names, expires …, in …)",
// the default one first.
func describeCerts(info []certs.Info, now time.Time) string {
	out := make([]string, 0, len(info))
	for _, c := range info {
		out = append(out, c.File+" ("+strings.Join(c.Names, ",")+", expires "+c.NotAfter.UTC().Format(time.RFC3339)+
			", in "+c.NotAfter.Sub(now).Round(time.Hour).String()+")")
	}
	return strings.Join(out, "; ")
}
