// Package certs makes a development certificate authority and a
// certificate per site, for the TLS links between sites (`casualdb certs`):
// what the demo and the tests use, and a start for an operator who has no
// PKI yet. A production deployment should use its own CA.
//
// Each site's certificate names the site (its common name and a DNS name,
// which the NATS server maps to the site's identity), carries the hosts it
// is reached at (localhost and 127.0.0.1 always), and serves both as a
// server certificate (its embedded NATS) and a client one (its connections
// to peers).
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files names what Generate writes for a site, in its directory.
type Files struct {
	CA, Cert, Key string
}

// For returns the files of site in dir.
func For(dir, site string) Files {
	return Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, site+".pem"), Key: filepath.Join(dir, site+"-key.pem")}
}

// Validity is how long generated certificates are valid.
const Validity = 365 * 24 * time.Hour

// Generate writes into dir a CA (ca.pem, ca-key.pem; reused when present)
// and, for every site, site.pem and site-key.pem, valid for the site's
// name, localhost, 127.0.0.1 and hosts[site] (names or IPs). Keys are
// written readable by the owner only.
func Generate(dir string, sites []string, hosts map[string][]string) error {
	if len(sites) == 0 {
		return errors.New("certs: no sites")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	ca, caKey, err := loadOrMakeCA(dir)
	if err != nil {
		return err
	}
	for _, site := range sites {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("certs: key of %s: %w", site, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: site, Organization: []string{"CasualDB"}},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     minTime(time.Now().Add(Validity), ca.NotAfter), // never past the CA's
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			DNSNames:     []string{site, "localhost"},
			IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		}
		for _, h := range hosts[site] {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("certs: certificate of %s: %w", site, err)
		}
		f := For(dir, site)
		if err := writePEM(f.Cert, "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return fmt.Errorf("certs: key of %s: %w", site, err)
		}
		if err := writePEM(f.Key, "EC PRIVATE KEY", kb, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func loadOrMakeCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	_, certErr := os.Stat(certFile)
	_, keyErr := os.Stat(keyFile)
	if errors.Is(certErr, os.ErrNotExist) != errors.Is(keyErr, os.ErrNotExist) {
		// Never replace a CA whose key was put away: every site's
		// certificate would stop verifying.
		return nil, nil, fmt.Errorf("certs: %s holds one of ca.pem and ca-key.pem without the other; put the CA's key back (or remove both to start a new CA)", dir)
	}
	if pair, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			return nil, nil, fmt.Errorf("certs: %s: %w", certFile, err)
		}
		key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, fmt.Errorf("certs: %s is not an ECDSA key", keyFile)
		}
		if time.Until(cert.NotAfter) < 24*time.Hour {
			return nil, nil, fmt.Errorf("certs: the CA in %s expires %s: make a new one (remove ca.pem and ca-key.pem) and new certificates for every site", dir, cert.NotAfter.Format(time.DateOnly))
		}
		return cert, key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("certs: the CA in %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "CasualDB development CA", Organization: []string{"CasualDB"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: CA: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: CA key: %w", err)
	}
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	if err := writePEM(keyFile, "EC PRIVATE KEY", kb, 0o600); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, mode); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	// WriteFile keeps the mode of a file that existed.
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}

// ServerConfig returns the TLS configuration of a site's embedded NATS
// server: its certificate, and every client must present one the CA signed.
func ServerConfig(f Files) (*tls.Config, error) {
	cert, pool, err := load(f)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// ClientConfig returns the TLS configuration of a site's connections to
// NATS servers: its certificate, and servers verified against the CA.
func ClientConfig(f Files) (*tls.Config, error) {
	cert, pool, err := load(f)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func load(f Files) (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	b, err := os.ReadFile(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return tls.Certificate{}, nil, fmt.Errorf("load CA: %s holds no PEM certificate", f.CA)
	}
	return cert, pool, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
