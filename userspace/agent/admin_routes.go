package agent

import (
	l7service "github.com/sluicelb/sluice/l7/service"
	"github.com/sluicelb/sluice/userspace/admin"
	"github.com/sluicelb/sluice/userspace/config"
)

// routeStatus lists the routes of an http service for Status, each with
// its pool's addresses counted by state; the service's own pool comes
// last as the route "default". nil for a service without routes.
func routeStatus(sc config.Service, pools map[string]*poolState) []admin.Route {
	if len(sc.Routes) == 0 {
		return nil
	}
	out := make([]admin.Route, 0, len(sc.Routes)+1)
	add := func(name, match, poolName string) {
		r := admin.Route{Name: name, Match: match, Pool: poolName}
		if ps, ok := pools[poolName]; ok {
			r.Backends = make(map[string]int)
			for _, b := range ps.p.Backends() {
				r.Backends[b.State.String()]++
			}
		}
		out = append(out, r)
	}
	for _, r := range sc.Routes {
		add(r.Name, r.Spec().String(), r.Pool)
	}
	if sc.Pool != "" {
		add(l7service.DefaultRouteName, "anything else", sc.Pool)
	}
	return out
}
