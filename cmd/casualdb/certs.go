package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/certs"
)

// certsCmd makes a development CA and a certificate per site for the TLS
// links between sites (nats.tls).
func (m *Main) certsCmd(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	dir := fs.String("dir", "casualdb-certs", "directory to write ca.pem, ca-key.pem and SITE.pem, SITE-key.pem into (an existing CA there is reused)")
	var sites []string
	hosts := map[string][]string{}
	fs.Func("site", "a site to make a certificate for (repeatable)", func(s string) error {
		if !casualdb.SiteID(s).Valid() {
			return fmt.Errorf("%q is not a site name", s)
		}
		sites = append(sites, s)
		return nil
	})
	fs.Func("host", "SITE=HOST: a name or IP the site is reached at, besides localhost (repeatable)", func(s string) error {
		site, host, ok := strings.Cut(s, "=")
		if !ok || site == "" || host == "" {
			return fmt.Errorf("want SITE=HOST, got %q", s)
		}
		hosts[site] = append(hosts[site], host)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(sites) == 0 {
		return fmt.Errorf("%w: certs: name at least one --site", casualdb.ErrConfig)
	}
	for site := range hosts {
		if !slices.Contains(sites, site) {
			return fmt.Errorf("%w: certs: --host for %s, which is not a --site", casualdb.ErrConfig, site)
		}
	}
	if err := certs.Generate(*dir, sites, hosts); err != nil {
		return err
	}
	for _, s := range sites {
		f := certs.For(*dir, s)
		fmt.Fprintf(m.Stdout, "site %s: nats.tls: {cert: %s, key: %s, ca: %s}\n", s, f.Cert, f.Key, f.CA)
	}
	fmt.Fprintf(m.Stdout, "the CA's key is %s/ca-key.pem: keep it off the sites (development use; a production deployment uses its own CA)\n", *dir)
	return nil
}
