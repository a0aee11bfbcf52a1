package node

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/check"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/ring"
	"github.com/casualdb/casualdb/ship"
	"gopkg.in/yaml.v3"
)

// Config is the sidecar's YAML configuration. README.md documents every key.
type Config struct {
	Site        string            `yaml:"site"`
	DataDir     string            `yaml:"data_dir"`
	Database    DatabaseConfig    `yaml:"database"`
	NATS        NATSConfig        `yaml:"nats"`
	Peers       []PeerConfig      `yaml:"peers"`
	Cluster     ClusterConfig     `yaml:"cluster"`
	Admin       AdminConfig       `yaml:"admin"`
	Capture     CaptureConfig     `yaml:"capture"`
	Ship        ShipConfig        `yaml:"ship"`
	Apply       ApplyConfig       `yaml:"apply"`
	Conflicts   ConflictsConfig   `yaml:"conflicts"`
	GC          GCConfig          `yaml:"gc"`
	AntiEntropy AntiEntropyConfig `yaml:"antientropy"`
	Log         LogConfig         `yaml:"log"`
}

// GCConfig paces the removal of tombstones every site has seen.
type GCConfig struct {
	// Interval is how often tombstones are collected.
	Interval time.Duration `yaml:"interval"`
	// Heartbeat is at most how often the site writes its heartbeat row, so
	// that its peers learn what it has applied, and its newest sequence,
	// even when it writes nothing else: after capture shipped or apply
	// applied something besides heartbeats, and once every 30 intervals
	// regardless (beatDue).
	Heartbeat time.Duration `yaml:"heartbeat"`
}

// AntiEntropyConfig runs `casualdb check` in the background.
type AntiEntropyConfig struct {
	// Interval is the time between two checks; 0 (the default) turns
	// continuous anti-entropy off.
	Interval time.Duration `yaml:"interval"`
	// Repair repairs what a check finds (see check.Plan).
	Repair bool `yaml:"repair"`
	// Buckets is the number of key buckets per table.
	Buckets int `yaml:"buckets"`
}

// ConflictsConfig chooses how conflicts resolve, by default and per table.
type ConflictsConfig struct {
	// DeletePolicy is delete_wins (a delete beats every concurrent update)
	// or lww (the later of the two by HLC wins).
	DeletePolicy string                         `yaml:"delete_policy"`
	Tables       map[string]TableConflictConfig `yaml:"tables"`
	// LogRetention bounds casualdb.conflict_log by age.
	LogRetention time.Duration `yaml:"log_retention"`
}

// TableConflictConfig overrides the conflict rules of one table.
type TableConflictConfig struct {
	DeletePolicy string `yaml:"delete_policy"`
	// Counters are numeric columns merged by adding every site's
	// increments (the table gets REPLICA IDENTITY FULL).
	Counters []string `yaml:"counters"`
	// Merge is "row" (the whole row of the last writer wins) or
	// "columns" (each column keeps its own last writer; the table gets
	// REPLICA IDENTITY FULL).
	Merge string `yaml:"merge"`
}

// MergeColumns returns the tables whose columns merge one by one.
func (c ConflictsConfig) MergeColumns() map[string]bool {
	out := map[string]bool{}
	for name, t := range c.Tables {
		if t.Merge == "columns" {
			tbl, _ := capture.ParseTable(name)
			out[tbl.String()] = true
		}
	}
	return out
}

// Counters returns the counter columns by schema-qualified table name.
func (c ConflictsConfig) Counters() map[string][]string {
	out := map[string][]string{}
	for name, t := range c.Tables {
		if len(t.Counters) == 0 {
			continue
		}
		tbl, _ := capture.ParseTable(name)
		out[tbl.String()] = t.Counters
	}
	return out
}

// DeletePolicies returns the default delete policy and the overrides by
// schema-qualified table name; Validate has checked them.
func (c ConflictsConfig) DeletePolicies() (conflict.DeletePolicy, map[string]conflict.DeletePolicy) {
	def, _ := parseDeletePolicy(c.DeletePolicy)
	out := map[string]conflict.DeletePolicy{}
	for name, t := range c.Tables {
		if t.DeletePolicy == "" {
			continue
		}
		tbl, _ := capture.ParseTable(name)
		out[tbl.String()], _ = parseDeletePolicy(t.DeletePolicy)
	}
	return def, out
}

func parseDeletePolicy(s string) (conflict.DeletePolicy, error) {
	switch s {
	case "", "delete_wins":
		return conflict.DeleteWins, nil
	case "lww":
		return conflict.LastWriterWins, nil
	}
	return 0, fmt.Errorf("%q: want delete_wins or lww", s)
}

// DatabaseConfig names the local PostgreSQL and what replicates.
type DatabaseConfig struct {
	DSN            string        `yaml:"dsn"`
	Tables         []string      `yaml:"tables"`
	Slot           string        `yaml:"slot"`
	Publication    string        `yaml:"publication"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ToastFullIdentity gives every replicated table with a column that
	// may be stored out of line REPLICA IDENTITY FULL, so that updates ship
	// the TOASTed values they leave unchanged.
	ToastFullIdentity bool `yaml:"toast_full_identity"`
}

// NATSConfig selects the embedded NATS server or an existing one.
type NATSConfig struct {
	Listen         string `yaml:"listen"`
	URL            string `yaml:"url"`
	SyncAlways     bool   `yaml:"sync_always"`
	OutboxMaxBytes int64  `yaml:"outbox_max_bytes"`
	// OutboxRetention keeps every transaction in the outbox at least this
	// long, even once every known peer has it: a peer that gossip makes
	// known later still gets it. 0: trim as soon as every known peer has it.
	OutboxRetention time.Duration `yaml:"outbox_retention"`
	// TLS secures every link between sites: this site's NATS server and
	// its connections to peers'.
	TLS NATSTLSConfig `yaml:"tls"`
	// Insecure allows plain-text NATS links off loopback.
	Insecure bool `yaml:"insecure"`
	// Creds (a NATS credentials file: JWT and NKey seed) or NKeySeedFile
	// (an NKey seed) authenticate the sidecar to an external URL. The
	// embedded server authenticates peers by their certificates instead.
	Creds        string `yaml:"creds"`
	NKeySeedFile string `yaml:"nkey_seed_file"`
}

// NATSTLSConfig is this site's certificate and the CA of every site's
// (`casualdb certs` makes a development set). Peers verify each other:
// a client without a certificate the CA signed is refused.
type NATSTLSConfig struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	CA   string `yaml:"ca"`
}

// On tells whether TLS is configured.
func (t NATSTLSConfig) On() bool { return t.Cert != "" }

// Files returns the configured files as certs names them.
func (t NATSTLSConfig) Files() certs.Files { return certs.Files{CA: t.CA, Cert: t.Cert, Key: t.Key} }

// PeerConfig is another site.
type PeerConfig struct {
	Name    string `yaml:"name"`
	NATSURL string `yaml:"nats_url"`
}

// ClusterConfig turns on gossip membership: sites find each other (and
// each other's NATS) by joining any live site, instead of or besides the
// static peers list.
type ClusterConfig struct {
	// Bind is where gossip listens (TCP and UDP), host:port. Empty: no
	// gossip; the peers list is the cluster.
	Bind string `yaml:"bind"`
	// Advertise is the address peers reach this site's gossip at; default
	// Bind (which must then be a specific IP).
	Advertise string `yaml:"advertise"`
	// Join lists gossip addresses of other sites; one live one is enough.
	Join []string `yaml:"join"`
	// SecretKey encrypts gossip: base64 of 16, 24 or 32 random bytes, the
	// same at every site. Required off loopback unless Insecure.
	SecretKey string `yaml:"secret_key"`
	// SecretKeyFile holds SecretKey instead (keeps it out of the YAML).
	SecretKeyFile string `yaml:"secret_key_file"`
	// Insecure allows plain-text gossip on non-loopback addresses.
	Insecure bool `yaml:"insecure"`
	// PushPull is how often a site exchanges its full state (membership
	// and progress digest) with a random peer.
	PushPull time.Duration `yaml:"push_pull"`
	// N is the length of a transaction's preference list on the ring: the
	// sites responsible for keeping it durably; one that is down gets it as
	// a hint kept by a live stand-in.
	N int `yaml:"n"`
	// W is how many sites (this one included) must hold a transaction
	// durably for it to count as W-durable: casualdb.wait_durable() waits
	// for it. It works with or without gossip.
	W int `yaml:"w"`
	// HintRetention is how long this site keeps a hint for a site that is
	// down. An older hint is removed, never silently: what was given up is
	// recorded first (casualdb.hint_expiry), logged, counted, and gossiped
	// to the site it was for, which reports the transactions it misses
	// until it gets them from their origin. Default 24h; must be positive.
	HintRetention time.Duration `yaml:"hint_retention"`
}

// Key decodes SecretKey, or SecretKeyFile's content (Validate has checked
// it).
func (c ClusterConfig) Key() []byte {
	s, _ := c.secretKey()
	k, _ := base64.StdEncoding.DecodeString(s)
	return k
}

// secretKey returns SecretKey, or SecretKeyFile's content (trimmed).
func (c ClusterConfig) secretKey() (string, error) {
	if c.SecretKeyFile == "" {
		return c.SecretKey, nil
	}
	b, err := os.ReadFile(c.SecretKeyFile)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// AdminConfig is the HTTP endpoint for metrics, health and status.
type AdminConfig struct {
	Listen string `yaml:"listen"`
	// PProf serves /debug/pprof: off by default (profiles expose the
	// process's memory).
	PProf bool `yaml:"pprof"`
	// TokenFile holds a bearer token that every request but /healthz must
	// carry (Authorization: Bearer ...). CASUALDB_ADMIN_TOKEN sets the token
	// itself instead. Neither: no token.
	TokenFile string `yaml:"token_file"`
	// Token is the token from CASUALDB_ADMIN_TOKEN (never in the YAML).
	Token string         `yaml:"-"`
	TLS   AdminTLSConfig `yaml:"tls"`
}

// AdminTLSConfig serves the admin endpoint over HTTPS.
type AdminTLSConfig struct {
	Cert string `yaml:"cert"` // PEM certificate (chain) file; with key, HTTPS
	Key  string `yaml:"key"`  // PEM private key file
	// CA is the PEM file of the authority the command line verifies the
	// endpoint's certificate with (default: the system's).
	CA string `yaml:"ca"`
}

// BearerToken returns the admin token: CASUALDB_ADMIN_TOKEN's, or
// token_file's content (trimmed); "" when neither is set.
func (a AdminConfig) BearerToken() (string, error) {
	if a.Token != "" {
		return a.Token, nil
	}
	if a.TokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return "", fmt.Errorf("%w: admin.token_file: %v", casualdb.ErrConfig, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%w: admin.token_file: %s is empty", casualdb.ErrConfig, a.TokenFile)
	}
	return tok, nil
}

// CaptureConfig tunes capture.
type CaptureConfig struct {
	// MaxBatch is the most local transactions versioned and appended to
	// the outbox at once.
	MaxBatch int `yaml:"max_batch"`
	// Linger lets a small batch wait this long for more while
	// transactions come steadily (capture.Config.Linger). 0: never.
	Linger time.Duration `yaml:"linger"`
}

// ShipConfig tunes the shippers.
type ShipConfig struct {
	// MaxBatch is the most transactions a shipper publishes to a peer in
	// one round.
	MaxBatch int `yaml:"max_batch"`
}

// ApplyConfig tunes apply.
type ApplyConfig struct {
	MaxBatch    int           `yaml:"max_batch"`
	WaitTimeout time.Duration `yaml:"wait_timeout"`
}

// LogConfig sets the log output.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// DefaultHeartbeat is gc.heartbeat's default.
const DefaultHeartbeat = 10 * time.Second

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{
		DataDir:     "casualdb-data",
		Database:    DatabaseConfig{Publication: capture.DefaultPublication, ConnectTimeout: 10 * time.Second, ToastFullIdentity: true},
		NATS:        NATSConfig{Listen: "127.0.0.1:4222", OutboxMaxBytes: ship.DefaultOutboxMaxBytes, OutboxRetention: 10 * time.Minute},
		Admin:       AdminConfig{Listen: "127.0.0.1:9187"},
		Capture:     CaptureConfig{MaxBatch: capture.DefaultMaxBatch, Linger: capture.DefaultLinger},
		Ship:        ShipConfig{MaxBatch: ship.DefaultMaxBatch},
		Apply:       ApplyConfig{MaxBatch: apply.DefaultMaxBatch, WaitTimeout: apply.DefaultWaitTimeout},
		Conflicts:   ConflictsConfig{DeletePolicy: "delete_wins", LogRetention: 30 * 24 * time.Hour},
		GC:          GCConfig{Interval: 30 * time.Second, Heartbeat: DefaultHeartbeat},
		AntiEntropy: AntiEntropyConfig{Repair: true, Buckets: check.DefaultBuckets},
		Cluster:     ClusterConfig{PushPull: ring.DefaultPushPull, N: 3, W: 2, HintRetention: 24 * time.Hour},
		Log:         LogConfig{Level: "info", Format: "text"},
	}
}

// ParseConfig reads YAML over the defaults. Unknown keys are errors.
func ParseConfig(r io.Reader) (Config, error) {
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("%w: %v", casualdb.ErrConfig, err)
	}
	return cfg, nil
}

// LoadConfig reads the file at path (none: defaults only).
func LoadConfig(path string) (Config, error) {
	if path == "" {
		return DefaultConfig(), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: open config: %v", casualdb.ErrConfig, err)
	}
	defer f.Close()
	cfg, err := ParseConfig(f)
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// ApplyEnv overrides the main keys from CASUALDB_* environment variables.
// A variable it cannot parse is an error naming it.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	set := func(dst *string, name string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set(&c.Site, "CASUALDB_SITE")
	set(&c.Database.DSN, "CASUALDB_DSN")
	set(&c.DataDir, "CASUALDB_DATA_DIR")
	set(&c.NATS.Listen, "CASUALDB_NATS_LISTEN")
	set(&c.NATS.URL, "CASUALDB_NATS_URL")
	set(&c.Admin.Listen, "CASUALDB_ADMIN_LISTEN")
	set(&c.Admin.Token, "CASUALDB_ADMIN_TOKEN")
	set(&c.Log.Level, "CASUALDB_LOG_LEVEL")
	set(&c.Cluster.Bind, "CASUALDB_CLUSTER_BIND")
	set(&c.Cluster.Advertise, "CASUALDB_CLUSTER_ADVERTISE")
	set(&c.Cluster.SecretKey, "CASUALDB_CLUSTER_SECRET_KEY")
	if v := getenv("CASUALDB_CLUSTER_JOIN"); v != "" {
		c.Cluster.Join = splitList(v)
	}
	if v := getenv("CASUALDB_PEERS"); v != "" {
		peers, err := ParsePeers(strings.Split(v, ","))
		if err == nil && len(peers) == 0 {
			err = fmt.Errorf("%w: no peer in %q", casualdb.ErrConfig, v)
		}
		if err != nil {
			return fmt.Errorf("CASUALDB_PEERS: %w", err)
		}
		c.Peers = peers
	}
	return nil
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, it := range strings.Split(v, ",") {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	return out
}

// ParsePeers parses name=nats://host:port items.
func ParsePeers(items []string) ([]PeerConfig, error) {
	var out []PeerConfig
	for _, it := range items {
		it = strings.TrimSpace(it)
		if it == "" {
			continue
		}
		name, u, ok := strings.Cut(it, "=")
		if !ok {
			return nil, fmt.Errorf("%w: peer %q: want name=nats://host:port", casualdb.ErrConfig, it)
		}
		out = append(out, PeerConfig{Name: name, NATSURL: u})
	}
	return out, nil
}

// Validate checks the configuration; the error names the offending key.
func (c Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", casualdb.ErrConfig, key, fmt.Sprintf(format, args...))
	}
	if c.Site == "" {
		return bad("site", "required (this site's name, e.g. \"eu1\")")
	}
	if !casualdb.SiteID(c.Site).Valid() {
		return bad("site", "%q must be 1-31 lower-case letters, digits, '-' or '_', starting with a letter or digit", c.Site)
	}
	if c.Database.DSN == "" {
		return bad("database.dsn", "required (e.g. postgres://postgres@127.0.0.1:5432/app)")
	}
	if u, err := url.Parse(c.Database.DSN); strings.Contains(c.Database.DSN, "://") && (err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql")) {
		return bad("database.dsn", "not a postgres:// URL")
	}
	if c.DataDir == "" {
		return bad("data_dir", "required")
	}
	if c.Database.Publication == "" {
		return bad("database.publication", "must not be empty")
	}
	for _, t := range c.Database.Tables {
		if strings.TrimSpace(t) == "" || strings.Count(t, ".") > 1 {
			return bad("database.tables", "%q is not a table name (name or schema.name)", t)
		}
	}
	if c.Database.ConnectTimeout <= 0 {
		return bad("database.connect_timeout", "must be positive")
	}
	if c.NATS.URL == "" {
		if _, _, err := net.SplitHostPort(c.NATS.Listen); err != nil {
			return bad("nats.listen", "%q is not host:port", c.NATS.Listen)
		}
	} else if u, err := url.Parse(c.NATS.URL); err != nil || (u.Scheme != "nats" && u.Scheme != "tls") {
		return bad("nats.url", "%q is not a nats:// or tls:// URL", c.NATS.URL)
	}
	switch {
	case c.NATS.Creds != "" && c.NATS.NKeySeedFile != "":
		return bad("nats.creds", "set nats.creds or nats.nkey_seed_file, not both")
	case (c.NATS.Creds != "" || c.NATS.NKeySeedFile != "") && c.NATS.URL == "":
		k := "nats.creds"
		if c.NATS.Creds == "" {
			k = "nats.nkey_seed_file"
		}
		return bad(k, "only for an external nats.url: the embedded server knows its own connection, and peers by their certificates")
	}
	for k, f := range map[string]string{"nats.creds": c.NATS.Creds, "nats.nkey_seed_file": c.NATS.NKeySeedFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return bad(k, "%v", err)
		}
	}
	if c.NATS.OutboxRetention < 0 {
		return bad("nats.outbox_retention", "must not be negative")
	}
	if c.NATS.OutboxMaxBytes == 0 || c.NATS.OutboxMaxBytes < -1 {
		return bad("nats.outbox_max_bytes", "must be positive, or -1 for unbounded")
	}
	seen := map[string]bool{c.Site: true}
	for i, p := range c.Peers {
		key := fmt.Sprintf("peers[%d]", i)
		if !casualdb.SiteID(p.Name).Valid() {
			return bad(key+".name", "%q is not a site name", p.Name)
		}
		if seen[p.Name] {
			return bad(key+".name", "%q appears twice (or is this site)", p.Name)
		}
		seen[p.Name] = true
		if u, err := url.Parse(p.NATSURL); err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
			return bad(key+".nats_url", "%q is not a nats:// or tls://host:port URL", p.NATSURL)
		}
	}
	if err := c.Cluster.validate(bad); err != nil {
		return err
	}
	if err := c.NATS.validateTLS(bad, c.offLoopback()); err != nil {
		return err
	}
	if c.Admin.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			return bad("admin.listen", "%q is not host:port", c.Admin.Listen)
		}
	}
	if _, err := c.Admin.BearerToken(); err != nil {
		return err
	}
	if (c.Admin.TLS.Cert == "") != (c.Admin.TLS.Key == "") {
		return bad("admin.tls", "cert and key go together")
	}
	if err := filesExist(bad, "admin.tls", c.Admin.TLS.Cert, c.Admin.TLS.Key, c.Admin.TLS.CA); err != nil {
		return err
	}
	if c.AntiEntropy.Interval < 0 {
		return bad("antientropy.interval", "must not be negative (0 turns it off)")
	}
	if c.AntiEntropy.Buckets <= 0 || c.AntiEntropy.Buckets > check.BucketLimit {
		return bad("antientropy.buckets", "must be between 1 and %d", check.BucketLimit)
	}
	if c.Capture.MaxBatch <= 0 {
		return bad("capture.max_batch", "must be positive")
	}
	if c.Capture.Linger < 0 || c.Capture.Linger > time.Second {
		return bad("capture.linger", "%s: must be between 0 (never) and 1s", c.Capture.Linger)
	}
	if c.Ship.MaxBatch <= 0 {
		return bad("ship.max_batch", "must be positive")
	}
	if c.Apply.MaxBatch <= 0 {
		return bad("apply.max_batch", "must be positive")
	}
	if c.Apply.WaitTimeout <= 0 {
		return bad("apply.wait_timeout", "must be positive")
	}
	if c.Conflicts.LogRetention <= 0 {
		return bad("conflicts.log_retention", "must be positive")
	}
	if c.GC.Interval <= 0 {
		return bad("gc.interval", "must be positive")
	}
	if c.GC.Heartbeat <= 0 {
		return bad("gc.heartbeat", "must be positive")
	}
	if _, err := parseDeletePolicy(c.Conflicts.DeletePolicy); err != nil {
		return bad("conflicts.delete_policy", "%v", err)
	}
	for name, t := range c.Conflicts.Tables {
		if _, err := capture.ParseTable(name); err != nil || strings.Count(name, ".") > 1 {
			return bad("conflicts.tables", "%q is not a table name (name or schema.name)", name)
		}
		if _, err := parseDeletePolicy(t.DeletePolicy); err != nil {
			return bad("conflicts.tables."+name+".delete_policy", "%v", err)
		}
		switch t.Merge {
		case "", "row", "columns":
		default:
			return bad("conflicts.tables."+name+".merge", "%q: want row or columns", t.Merge)
		}
		seen := map[string]bool{}
		for _, col := range t.Counters {
			if strings.TrimSpace(col) == "" || seen[col] {
				return bad("conflicts.tables."+name+".counters", "%q is empty or listed twice", col)
			}
			seen[col] = true
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return bad("log.format", "%q: want text or json", c.Log.Format)
	}
	return nil
}

// SlotName is the replication slot of the site.
func (c Config) SlotName() string {
	if c.Database.Slot != "" {
		return c.Database.Slot
	}
	return "casualdb_" + strings.ReplaceAll(c.Site, "-", "_")
}

// validate checks the cluster keys; bad builds the error naming the key.
func (c ClusterConfig) validate(bad func(key, format string, args ...any) error) error {
	if c.W < 1 || (c.N >= 1 && c.W > c.N) {
		return bad("cluster.w", "%d: want 1 to cluster.n (%d)", c.W, c.N)
	}
	if c.HintRetention <= 0 {
		return bad("cluster.hint_retention", "%s: must be positive (how long a hint is kept for a site that is down, e.g. 24h)", c.HintRetention)
	}
	if c.Bind == "" {
		if len(c.Join) > 0 || c.Advertise != "" {
			return bad("cluster.bind", "required when cluster.join or cluster.advertise is set (where gossip listens, host:port)")
		}
		return nil
	}
	hostPort := func(key, v string) (string, error) {
		host, port, err := net.SplitHostPort(v)
		if err != nil || port == "" || port == "0" {
			return "", bad(key, "%q is not host:port", v)
		}
		return host, nil
	}
	bindHost, err := hostPort("cluster.bind", c.Bind)
	if err != nil {
		return err
	}
	advHost := bindHost
	if c.Advertise != "" {
		if advHost, err = hostPort("cluster.advertise", c.Advertise); err != nil {
			return err
		}
	}
	if ip := net.ParseIP(advHost); ip == nil || ip.IsUnspecified() {
		key := "cluster.advertise"
		if c.Advertise == "" {
			key = "cluster.bind"
		}
		return bad(key, "%q: peers need a specific IP address to reach this site's gossip at (set cluster.advertise)", advHost)
	}
	for i, j := range c.Join {
		if _, err := hostPort(fmt.Sprintf("cluster.join[%d]", i), j); err != nil {
			return err
		}
	}
	keyName := "cluster.secret_key"
	if c.SecretKeyFile != "" {
		if c.SecretKey != "" {
			return bad("cluster.secret_key_file", "set cluster.secret_key or cluster.secret_key_file, not both")
		}
		keyName = "cluster.secret_key_file"
	}
	secret, err := c.secretKey()
	if err != nil {
		return bad(keyName, "%v", err)
	}
	if secret != "" {
		k, err := base64.StdEncoding.DecodeString(secret)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			return bad(keyName, "want base64 of 16, 24 or 32 bytes (e.g. from `head -c 32 /dev/urandom | base64`)")
		}
	} else if !c.Insecure && !(isLoopbackHost(bindHost) && isLoopbackHost(advHost)) {
		return bad("cluster.secret_key", "required to gossip on %s, off loopback (or set cluster.insecure: true to gossip in plain text)", c.Bind)
	}
	if c.PushPull <= 0 {
		return bad("cluster.push_pull", "must be positive")
	}
	if c.N < 1 {
		return bad("cluster.n", "must be at least 1")
	}
	return nil
}

func isLoopbackHost(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// offLoopback names a NATS link of c that leaves loopback ("" if none):
// the embedded server's listen address, an external server, a peer, or
// gossip (whose peers' NATS addresses follow the gossip address's host).
func (c Config) offLoopback() string {
	hostOf := func(hostport string) string {
		h, _, _ := net.SplitHostPort(hostport)
		return h
	}
	if c.NATS.URL == "" && !isLoopbackHost(hostOf(c.NATS.Listen)) {
		return "nats.listen " + c.NATS.Listen
	}
	if u, err := url.Parse(c.NATS.URL); c.NATS.URL != "" && err == nil && !isLoopbackHost(u.Hostname()) {
		return "nats.url " + c.NATS.URL
	}
	for _, p := range c.Peers {
		if u, err := url.Parse(p.NATSURL); err == nil && !isLoopbackHost(u.Hostname()) {
			return "peer " + p.Name + " at " + p.NATSURL
		}
	}
	if c.Cluster.Bind != "" && !isLoopbackHost(hostOf(c.Cluster.Bind)) {
		return "cluster.bind " + c.Cluster.Bind
	}
	return ""
}

// validateTLS checks nats.tls: all three files or none, each readable; and
// TLS (or nats.insecure) when a link leaves loopback (off names it).
func (n NATSConfig) validateTLS(bad func(key, format string, args ...any) error, off string) error {
	t := n.TLS
	if set := [3]bool{t.Cert != "", t.Key != "", t.CA != ""}; set != [3]bool{} && set != [3]bool{true, true, true} {
		return bad("nats.tls", "cert, key and ca go together")
	}
	if err := filesExist(bad, "nats.tls", t.Cert, t.Key, t.CA); err != nil {
		return err
	}
	if off != "" && !t.On() && !n.Insecure {
		return bad("nats.tls", "required off loopback (%s): set nats.tls.cert, nats.tls.key and nats.tls.ca (casualdb certs makes a development set), or nats.insecure: true for plain text", off)
	}
	return nil
}

// filesExist checks the files of a TLS section (key.cert, key.key, key.ca)
// that are set.
func filesExist(bad func(key, format string, args ...any) error, key, cert, priv, ca string) error {
	for _, f := range [][2]string{{key + ".cert", cert}, {key + ".key", priv}, {key + ".ca", ca}} {
		if f[1] == "" {
			continue
		}
		if _, err := os.Stat(f[1]); err != nil {
			return bad(f[0], "%v", err)
		}
	}
	return nil
}
