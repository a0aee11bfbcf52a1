package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/casualdb/casualdb"
)

// AdminClient reaches a running sidecar's admin endpoint, as `casualdb
// status` and `check` do.
type AdminClient struct {
	URL   string // scheme://host:port
	Token string // bearer token ("": none)
	CA    string // PEM file the HTTPS endpoint is verified against ("": the system's roots)
}

// Get reads path, with the bearer token when there is one; a status other
// than 200 is an error with the body's text.
func (c AdminClient) Get(ctx context.Context, path string) ([]byte, error) {
	return c.Do(ctx, http.MethodGet, path)
}

// Do is Get with another method (POST for a check that repairs).
func (c AdminClient) Do(ctx context.Context, method, path string) ([]byte, error) {
	client, err := c.client()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, nil)
	if err != nil {
		return nil, fmt.Errorf("%s of %s: %w", path, c.URL, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s of the sidecar at %s (is it running?): %w", path, c.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s of %s: %w", path, c.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s of %s: %s: %s", path, c.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// client returns the HTTP client: verifying the endpoint against CA when
// it is set.
func (c AdminClient) client() (*http.Client, error) {
	if c.CA == "" {
		return http.DefaultClient, nil
	}
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		return nil, fmt.Errorf("%w: admin CA: %v", casualdb.ErrConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: admin CA %s holds no PEM certificate", casualdb.ErrConfig, c.CA)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}
