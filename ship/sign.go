package ship

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go"
)

// Origin signatures. A site's permissions at a peer's NATS pin what it
// publishes to subjects naming it (auth.go), but a relay (a hint handed off
// on RelaySubject) carries another origin's transaction: the subject names
// the relayer, not the origin, so nothing but the origin's own signature
// can show that the origin wrote it. Signing every transaction would cost
// a signature per transaction at the origin; instead capture signs each
// outbox message once, over a Merkle tree of its transactions (RFC 9162's
// hashing), and whoever keeps one transaction of it as a hint keeps the
// transaction's inclusion proof and the signature with it. The key is the
// site's NATS TLS key; its certificate travels with the messages, and a
// receiver takes it only if it chains to the CA and names the origin.
const (
	// HeaderSig is one signed run of transactions of an outbox or inbox
	// message: "<first sequence> <count> <base64 signature>"; an inbox
	// message that joins several outbox messages has one value for each.
	HeaderSig = "Casualdb-Sig"
	// HeaderCert is the origin's certificate chain (base64 of the DER
	// certificates, leaf first) on a message that carries signatures or a
	// proof.
	HeaderCert = "Casualdb-Cert"
	// HeaderProof is, on a relayed transaction, its inclusion proof and
	// the signature of its run (base64; see Proof).
	HeaderProof = "Casualdb-Proof"
)

// signContext separates CasualDB's signed statements from anything else the
// key signs (it is also the TLS key).
const signContext = "casualdb signed run v1\x00"

// Signer signs runs of a site's transactions with its TLS key.
type Signer struct {
	site    casualdb.SiteID
	key     crypto.Signer
	certB64 string
}

// NewSigner returns the signer of site with the key and certificate of
// cfg (the site's NATS TLS client configuration); nil when cfg is nil (no
// TLS: no identity to sign with). The certificate must name the site.
func NewSigner(cfg *tls.Config, site casualdb.SiteID) (*Signer, error) {
	if cfg == nil || len(cfg.Certificates) == 0 {
		return nil, nil
	}
	c := cfg.Certificates[0]
	key, ok := c.PrivateKey.(crypto.Signer)
	if !ok || len(c.Certificate) == 0 {
		return nil, fmt.Errorf("%w: nats.tls.key: a key that cannot sign", casualdb.ErrConfig)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%w: nats.tls.cert: %v", casualdb.ErrConfig, err)
	}
	if leaf.Subject.CommonName != string(site) {
		return nil, fmt.Errorf("%w: nats.tls.cert names %q, not this site %q (peers take a site's identity from its certificate's common name)", casualdb.ErrConfig, leaf.Subject.CommonName, site)
	}
	// The chain as the site presents it (leaf first): a CA that issues
	// through intermediates needs them to verify.
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, der...)
	}
	certB64 := base64.StdEncoding.EncodeToString(chain)
	if len(certB64) > maxCertHeader {
		return nil, fmt.Errorf("%w: nats.tls.cert: a chain of %d bytes; peers take at most %d (base64) with each message", casualdb.ErrConfig, len(chain), maxCertHeader)
	}
	return &Signer{site: site, key: key, certB64: certB64}, nil
}

// runDigest is what a site signs for a run of its transactions: the site,
// its outbox's epoch, the first sequence, how many, and their Merkle root.
func runDigest(origin casualdb.SiteID, epoch string, first uint64, count int, root [32]byte) []byte {
	b := make([]byte, 0, len(signContext)+len(origin)+len(epoch)+2+2*binary.MaxVarintLen64+32)
	b = append(b, signContext...)
	b = append(b, origin...)
	b = append(b, 0)
	b = append(b, epoch...)
	b = append(b, 0)
	b = binary.AppendUvarint(b, first)
	b = binary.AppendUvarint(b, uint64(count))
	b = append(b, root[:]...)
	return b
}

// sign signs msg with key: ECDSA and RSA over its SHA-256, Ed25519 over msg.
func sign(key crypto.Signer, msg []byte) ([]byte, error) {
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		return key.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	d := sha256.Sum256(msg)
	return key.Sign(rand.Reader, d[:], crypto.SHA256)
}

func verifySig(pub any, msg, sig []byte) error {
	d := sha256.Sum256(msg)
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, d[:], sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig) == nil
	default:
		return fmt.Errorf("a %T key cannot verify", pub)
	}
	if !ok {
		return errors.New("bad signature")
	}
	return nil
}

// SignRun returns the HeaderSig value for txs (their encoded forms), the
// run of the site's transactions from sequence first in outbox epoch.
func (s *Signer) SignRun(epoch string, first uint64, txs [][]byte) (string, error) {
	t := newMerkle(txs)
	sig, err := sign(s.key, runDigest(s.site, epoch, first, len(txs), t.root()))
	if err != nil {
		return "", fmt.Errorf("sign transactions %d..%d: %w", first, first+uint64(len(txs))-1, err)
	}
	return strconv.FormatUint(first, 10) + " " + strconv.Itoa(len(txs)) + " " + base64.StdEncoding.EncodeToString(sig), nil
}

// Cert is the HeaderCert value of the signer's messages.
func (s *Signer) Cert() string { return s.certB64 }

// sigRun is one parsed HeaderSig value.
type sigRun struct {
	first uint64
	count int
	sig   []byte
}

func parseSigRun(v string) (sigRun, error) {
	f := strings.Fields(v)
	if len(f) != 3 {
		return sigRun{}, fmt.Errorf("%w: bad %s header %q", casualdb.ErrGarbled, HeaderSig, v)
	}
	first, err1 := strconv.ParseUint(f[0], 10, 64)
	count, err2 := strconv.Atoi(f[1])
	sig, err3 := base64.StdEncoding.DecodeString(f[2])
	if err := errors.Join(err1, err2, err3); err != nil || count <= 0 || first == 0 {
		return sigRun{}, fmt.Errorf("%w: bad %s header %q", casualdb.ErrGarbled, HeaderSig, v)
	}
	return sigRun{first: first, count: count, sig: sig}, nil
}

// certInterner keeps one copy of each certificate that comes with messages
// (every signed message carries its origin's; the hints kept in memory,
// package hint, hold one per transaction). Safe for concurrent use.
type certInterner struct {
	mu sync.Mutex
	m  map[string][]byte // by HeaderCert value
}

// intern decodes a HeaderCert value; nil when empty or not base64.
func (c *certInterner) intern(v string) []byte {
	if v == "" || len(v) > maxCertHeader {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if der, ok := c.m[v]; ok {
		return der
	}
	der, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(der) == 0 {
		return nil
	}
	if c.m == nil || len(c.m) >= maxVerifiedCerts {
		c.m = map[string][]byte{}
	}
	c.m[v] = der
	return der
}

// maxCertHeader bounds a HeaderCert value: a certificate chain of a few
// kilobytes is the rule; a larger one is taken for none (its signed
// transactions are garbled), so that a peer sending large, ever-new values
// cannot fill the interner (256 of them) or the hints that keep them.
const maxCertHeader = 32 << 10

// attachProofs gives each transaction of m that a HeaderSig run of h
// covers its Proof (what a holder keeps to relay it), and m the origin's
// certificate (cert, from HeaderCert). Runs must cover consecutive transactions of m as the
// origin signed them; a header that does not match the transactions makes
// m garbled. Unsigned transactions (an origin without TLS, or of an earlier
// version) get none.
func attachProofs(h nats.Header, m *casualdb.InboxMsg, cert []byte) error {
	vals := h.Values(HeaderSig)
	if len(vals) == 0 {
		return nil
	}
	if cert == nil {
		return fmt.Errorf("%w: signed transactions without a valid %s header", casualdb.ErrGarbled, HeaderCert)
	}
	m.Cert = cert
	next := 0 // runs come in order: each is looked for after the last
	for _, v := range vals {
		r, err := parseSigRun(v)
		if err != nil {
			return err
		}
		start := -1
		for i := next; i < len(m.Txs); i++ {
			if m.Txs[i].Seq == r.first {
				start = i
				break
			}
		}
		// r.count > len-start, not start+r.count > len: a count near
		// MaxInt would overflow the sum and index past the message
		// (a panic a peer could cause; TestAttachProofs).
		if start < 0 || r.count > len(m.Txs)-start || m.Txs[start+r.count-1].Seq != r.first+uint64(r.count)-1 {
			return fmt.Errorf("%w: %s header %d+%d does not match the message's transactions", casualdb.ErrGarbled, HeaderSig, r.first, r.count)
		}
		leaves := make([][]byte, r.count)
		for i := range leaves {
			leaves[i] = m.Txs[start+i].Data
		}
		t := newMerkle(leaves)
		for i := range leaves {
			m.Txs[start+i].Proof = encodeProof(i, r.count, t.path(i), r.sig)
		}
		next = start + r.count
	}
	return nil
}

// encodeProof frames a transaction's proof: uvarint index, uvarint count,
// uvarint path length, the path's hashes, the run's signature.
func encodeProof(index, count int, path [][32]byte, sig []byte) []byte {
	b := make([]byte, 0, 3*binary.MaxVarintLen64+32*len(path)+len(sig))
	b = binary.AppendUvarint(b, uint64(index))
	b = binary.AppendUvarint(b, uint64(count))
	b = binary.AppendUvarint(b, uint64(len(path)))
	for _, p := range path {
		b = append(b, p[:]...)
	}
	return append(b, sig...)
}

func decodeProof(b []byte) (index, count uint64, path [][32]byte, sig []byte, err error) {
	var vals [3]uint64
	for i := range vals {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return 0, 0, nil, nil, errors.New("bad framing")
		}
		vals[i], b = v, b[k:]
	}
	index, count, n := vals[0], vals[1], vals[2]
	if n > 64 || uint64(len(b)) < 32*n || index >= count {
		return 0, 0, nil, nil, errors.New("bad framing")
	}
	path = make([][32]byte, n)
	for i := range path {
		copy(path[i][:], b[32*i:])
	}
	return index, count, path, b[32*n:], nil
}

// RelayVerifier checks that a relayed transaction was signed by its origin:
// the certificate that comes with it chains to the CA and names the
// origin, and the proof ties the transaction to a run the certificate's key
// signed. Safe for concurrent use (each origin's consumer decodes on its
// own goroutine).
type RelayVerifier struct {
	roots *x509.CertPool
	mu    sync.Mutex
	certs map[string]*x509.Certificate // verified certificates, by DER
}

// NewRelayVerifier returns a verifier against the CA pool of cfg (the
// site's NATS TLS client configuration); nil when cfg is nil.
func NewRelayVerifier(cfg *tls.Config) *RelayVerifier {
	if cfg == nil || cfg.RootCAs == nil {
		return nil
	}
	return &RelayVerifier{roots: cfg.RootCAs, certs: map[string]*x509.Certificate{}}
}

// maxVerifiedCerts bounds the verifier's cache (certificates are renewed).
const maxVerifiedCerts = 256

func (v *RelayVerifier) cert(der []byte, origin casualdb.SiteID) (*x509.Certificate, error) {
	v.mu.Lock()
	c := v.certs[string(der)]
	v.mu.Unlock()
	if c != nil && time.Now().After(c.NotAfter) {
		c = nil // verified before it expired: verify again (and fail)
	}
	if c == nil {
		chain, err := x509.ParseCertificates(der)
		if err != nil || len(chain) == 0 {
			return nil, fmt.Errorf("certificate: %v", err)
		}
		c = chain[0]
		inter := x509.NewCertPool()
		for _, ic := range chain[1:] {
			inter.AddCert(ic)
		}
		// As the peers' NATS servers take a site's certificate: a client's.
		if _, err := c.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return nil, fmt.Errorf("certificate of %q: %w", c.Subject.CommonName, err)
		}
		v.mu.Lock()
		if len(v.certs) >= maxVerifiedCerts {
			clear(v.certs)
		}
		v.certs[string(der)] = c
		v.mu.Unlock()
	}
	if c.Subject.CommonName != string(origin) {
		return nil, fmt.Errorf("the certificate names %q", c.Subject.CommonName)
	}
	return c, nil
}

// errUnsigned: a relayed transaction without its origin's proof or
// certificate (relayProof finds none in the headers, Verify none given).
var errUnsigned = errors.New("it carries no signature of its origin")

// Verify checks that data, the transaction of origin with sequence seq in
// outbox epoch, is part of a run origin signed (proof, from HeaderProof)
// with the key of certificate der (from HeaderCert).
func (v *RelayVerifier) Verify(origin casualdb.SiteID, epoch string, seq uint64, data, proof, der []byte) error {
	if len(proof) == 0 || len(der) == 0 {
		return errUnsigned
	}
	c, err := v.cert(der, origin)
	if err != nil {
		return err
	}
	index, count, path, sig, err := decodeProof(proof)
	if err != nil {
		return fmt.Errorf("proof: %w", err)
	}
	if seq <= index {
		return errors.New("proof: sequence before its run")
	}
	root, ok := rootFromPath(leafHash(data), index, count, path)
	if !ok {
		return errors.New("proof: does not fit its run")
	}
	if err := verifySig(c.PublicKey, runDigest(origin, epoch, seq-index, int(count), root), sig); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	return nil
}

// Merkle trees as RFC 9162 (section 2.1) hashes them: a leaf is
// SHA-256(0x00 || data), a node SHA-256(0x01 || left || right), the left
// subtree holding the largest power of two below the count.

func leafHash(data []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(data)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func nodeHash(l, r [32]byte) [32]byte {
	var b [65]byte
	b[0] = 1
	copy(b[1:], l[:])
	copy(b[33:], r[:])
	return sha256.Sum256(b[:])
}

// merkle is a tree over n leaves, each subtree's hash computed once.
type merkle struct {
	hash        [32]byte
	size        int
	left, right *merkle
}

func newMerkle(leaves [][]byte) *merkle {
	if len(leaves) == 1 {
		return &merkle{hash: leafHash(leaves[0]), size: 1}
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	l, r := newMerkle(leaves[:k]), newMerkle(leaves[k:])
	return &merkle{hash: nodeHash(l.hash, r.hash), size: len(leaves), left: l, right: r}
}

func (t *merkle) root() [32]byte { return t.hash }

// path returns leaf i's inclusion path, the leaf's sibling first.
func (t *merkle) path(i int) [][32]byte {
	var rev [][32]byte // root's sibling first
	for t.size > 1 {
		if i < t.left.size {
			rev = append(rev, t.right.hash)
			t = t.left
		} else {
			rev = append(rev, t.left.hash)
			i -= t.left.size
			t = t.right
		}
	}
	slices.Reverse(rev)
	return rev
}

// rootFromPath computes the root a leaf's inclusion path leads to (RFC 9162,
// 2.1.3.2); ok is false when the path cannot be one of leaf index of count.
func rootFromPath(leaf [32]byte, index, count uint64, path [][32]byte) (root [32]byte, ok bool) {
	if index >= count {
		return root, false
	}
	fn, sn, r := index, count-1, leaf
	for _, p := range path {
		if sn == 0 {
			return root, false
		}
		if fn&1 == 1 || fn == sn {
			r = nodeHash(p, r)
			for fn&1 == 0 && fn != 0 {
				fn >>= 1
				sn >>= 1
			}
		} else {
			r = nodeHash(r, p)
		}
		fn >>= 1
		sn >>= 1
	}
	return r, sn == 0
}
