// Package config parses Ferry's oslo.config-style INI file into typed
// structs. The same struct tags drive parsing, defaults, validation and the
// generated sample (ferry-manage config sample), so the three never drift.
//
// Tags on option fields:
//
//	opt:"name"        option name in the INI file (required for an option)
//	default:"value"   default, in the same syntax as the file
//	help:"text"       help text for the sample
//	choices:"a,b"     allowed values (strings)
//	min:"n" max:"n"   bounds for integers and sizes
//	secret:"true"     value is a secret (never printed)
//
// Sections are fields of Config tagged section:"name".
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/ini.v1"
)

// Config is the whole file. Each binary reads the sections it needs.
type Config struct {
	Default           Default           `section:"DEFAULT"`
	Database          Database          `section:"database"`
	KeystoneAuthtoken KeystoneAuthtoken `section:"keystone_authtoken"`
	API               API               `section:"api"`
	Agent             Agent             `section:"agent"`
	TLS               TLS               `section:"tls"`
	Cinder            Cinder            `section:"cinder"`
	// Notifications is [oslo_messaging_notifications], as in every
	// OpenStack service.
	Notifications Notifications `section:"oslo_messaging_notifications"`
}

// Notifications is the [oslo_messaging_notifications] section of ferry-api:
// whether OpenStack notifications (transfer.end, replication.rpo_breached,
// replication.rpo_recovered) are published, and on which topic.
type Notifications struct {
	Driver string   `opt:"driver" default:"noop" choices:"messagingv2,noop" help:"messagingv2 publishes OpenStack notifications (oslo.messaging v2 envelopes) on Ferry's exchange with the routing key <topic>.<priority>; noop (the default, as in oslo.messaging) sends none."`
	Topics []string `opt:"topics" default:"notifications" help:"The topic notifications are published on (one): the routing key is <topic>.info, <topic>.warn or <topic>.error, and a queue of that name is declared when none is bound (bound it with a broker policy, e.g. max-length, if nothing consumes it)."`
}

// Enabled reports whether notifications are published.
func (n Notifications) Enabled() bool { return n.Driver == "messagingv2" }

// Cinder is the [cinder] section of ferry-api: how Cinder volumes and
// backups map to RBD images, per region. Regions missing from volume_pools
// do not accept volume sources; from backup_pools, backup sources.
type Cinder struct {
	CatalogInfo        string            `opt:"catalog_info" default:"volumev3::publicURL" help:"Cinder's endpoint in the catalog, as <service_type>:<service_name>:<interface> (nova's [cinder] catalog_info)."`
	VolumePools        map[string]string `opt:"volume_pools" default:"" help:"RBD pool of the Cinder RBD backend per region, as region:pool,region:pool. A volume <id> is the image volume-<id> there."`
	BackendHosts       map[string]string `opt:"backend_hosts" default:"" help:"Cinder host@backend#pool that manages a copied volume, per region, as region:host@backend#pool,..."`
	BackupPools        map[string]string `opt:"backup_pools" default:"" help:"RBD pool of the Ceph backup driver per region, as region:pool,..."`
	VolumeBackupDriver string            `opt:"backup_driver" default:"cinder.backup.drivers.ceph.CephBackupDriver" help:"Backup driver whose backups Ferry can move (the backup record's service)."`
	FinalizeTimeout    int               `opt:"finalize_timeout" default:"600" min:"10" max:"86400" help:"Seconds to wait for Cinder to manage a copied volume or import a backup before the transfer is put in error."`
	OwnerRole          string            `opt:"owner_role" default:"admin" help:"Role the service user holds on the owner's project, for the time of a registration only: manage-existing and backup import-record are admin-only in Cinder and create the resource in the token's project."`
	Timeout            int               `opt:"timeout" default:"60" min:"1" max:"3600" help:"Seconds one HTTP request to Cinder, or to Keystone on Cinder's behalf (service user token, role grants), may take."`
	VolumeTypeMap      []string          `opt:"volume_type_map" default:"" help:"Volume type a failover registers a replica as, per source region and type, as region:type=region:type,... (e.g. RegionOne:ssd=RegionTwo:fast-ssd): a volume of type ssd in RegionOne becomes a fast-ssd volume in RegionTwo. A type not listed for the destination region gets the destination's default volume type. Type names containing , or = cannot be mapped."`
}

// VolumeTypeRoute is one entry of [cinder] volume_type_map.
type VolumeTypeRoute struct {
	FromRegion, FromType, ToRegion string
}

// VolumeTypes parses [cinder] volume_type_map: source region, source type
// and destination region → the destination's volume type.
func (c Cinder) VolumeTypes() (map[VolumeTypeRoute]string, error) {
	m := make(map[VolumeTypeRoute]string, len(c.VolumeTypeMap))
	for _, e := range c.VolumeTypeMap {
		from, to, ok := strings.Cut(e, "=")
		fr, ft, ok1 := strings.Cut(strings.TrimSpace(from), ":")
		tr, tt, ok2 := strings.Cut(strings.TrimSpace(to), ":")
		fr, ft, tr, tt = strings.TrimSpace(fr), strings.TrimSpace(ft), strings.TrimSpace(tr), strings.TrimSpace(tt)
		if !ok || !ok1 || !ok2 || fr == "" || ft == "" || tr == "" || tt == "" || strings.Contains(to, "=") {
			return nil, fmt.Errorf("%q is not region:type=region:type", e)
		}
		if fr == tr {
			return nil, fmt.Errorf("%q maps a type within region %s", e, fr)
		}
		k := VolumeTypeRoute{fr, ft, tr}
		if prev, dup := m[k]; dup && prev != tt {
			return nil, fmt.Errorf("type %s of %s is mapped twice for %s (%s and %s)", ft, fr, tr, prev, tt)
		}
		m[k] = tt
	}
	return m, nil
}

// Default is the [DEFAULT] section.
type Default struct {
	TransportURL string `opt:"transport_url" default:"rabbit://guest:guest@127.0.0.1:5672/" secret:"true" help:"The network address and credentials for connecting to the messaging backend, in URL format: rabbit://user:pass@host:port/vhost. Several hosts may be given separated by commas."`
	Debug        bool   `opt:"debug" default:"false" help:"If true, the logging level is DEBUG instead of INFO."`
	LogFile      string `opt:"log_file" default:"" help:"Name of the log file to write to. If empty, logs go to standard error."`
	Host         string `opt:"host" default:"" help:"Name of this node, used in service records and agent queue names. Defaults to the machine's hostname."`
}

// Database is the [database] section.
type Database struct {
	Connection  string `opt:"connection" default:"sqlite:////var/lib/ferry/ferry.sqlite" secret:"true" help:"The URL of the database, in the oslo.db form: sqlite:////absolute/path, sqlite:///relative/path, mysql+pymysql://user:pass@host/db, postgresql://user:pass@host/db."`
	MaxPoolSize int    `opt:"max_pool_size" default:"5" min:"1" max:"1000" help:"Maximum number of open connections to the database (SQLite always uses a single writer connection)."`
}

// KeystoneAuthtoken is the [keystone_authtoken] section, named and shaped as
// keystonemiddleware's.
type KeystoneAuthtoken struct {
	WWWAuthenticateURI string `opt:"www_authenticate_uri" default:"" help:"Complete public Identity API endpoint, returned to unauthenticated clients in the WWW-Authenticate header. Defaults to auth_url."`
	AuthURL            string `opt:"auth_url" default:"" help:"Identity API endpoint used by the service user to validate tokens, e.g. http://127.0.0.1:5000/v3."`
	AuthType           string `opt:"auth_type" default:"password" choices:"password" help:"Authentication type of the service user."`
	Username           string `opt:"username" default:"ferry" help:"Service user name."`
	Password           string `opt:"password" default:"" secret:"true" help:"Service user password."`
	ProjectName        string `opt:"project_name" default:"service" help:"Service user's project."`
	UserDomainName     string `opt:"user_domain_name" default:"Default" help:"Service user's domain."`
	ProjectDomainName  string `opt:"project_domain_name" default:"Default" help:"Service project's domain."`
	RegionName         string `opt:"region_name" default:"RegionOne" help:"Region of the Identity endpoint used for validation."`
	TokenCacheTime     int    `opt:"token_cache_time" default:"300" min:"0" max:"86400" help:"Seconds a validated token is cached; never longer than the token's own expiry. 0 disables the cache."`
	TokenCacheSize     int    `opt:"token_cache_size" default:"10000" min:"1" max:"10000000" help:"Maximum number of validated tokens kept in the cache."`
	HTTPRequestTimeout int    `opt:"http_request_timeout" default:"10" min:"1" max:"600" help:"Seconds one request to Keystone (token validation, the service user's authentication) may take; a caller whose token cannot be validated in time gets 503."`
}

// API is the [api] section of ferry-api.
type API struct {
	BindHost           string            `opt:"bind_host" default:"0.0.0.0" help:"Address ferry-api listens on."`
	BindPort           int               `opt:"bind_port" default:"9790" min:"1" max:"65535" help:"Port ferry-api listens on."`
	PolicyFile         string            `opt:"policy_file" default:"/etc/ferry/policy.yaml" help:"oslo.policy-style YAML file overriding the default rules; a missing file means the defaults."`
	MaxRequestBodySize Size              `opt:"max_request_body_size" default:"112K" min:"1024" help:"Largest request body accepted (larger ones get 413)."`
	AgentDownTime      int               `opt:"agent_down_time" default:"60" min:"5" max:"86400" help:"Seconds without a heartbeat after which an agent is considered down and its transfers re-dispatched."`
	Dashboard          bool              `opt:"dashboard" default:"true" help:"Serve the web dashboard under /dashboard."`
	DefaultPageSize    int               `opt:"default_page_size" default:"100" min:"1" max:"1000" help:"Items returned by a list request without limit."`
	MaxPageSize        int               `opt:"max_page_size" default:"1000" min:"1" max:"100000" help:"Largest limit a list request may ask for."`
	OutboxPollInterval int               `opt:"outbox_poll_interval" default:"1" min:"1" max:"3600" help:"Seconds between scans of the outbox for messages not yet published."`
	OutboxRetention    int               `opt:"outbox_retention" default:"24" min:"0" max:"87600" help:"Hours a published outbox message is kept before it is deleted; 0 keeps them forever."`
	PublicEndpoint     string            `opt:"public_endpoint" default:"" help:"Public URL of this API, used in links. When unset, links use the X-Forwarded-Proto and X-Forwarded-Host of a trusted proxy (trusted_proxies), else this server's own address (bind_host, or the host name when bind_host is a wildcard); never a client's Host header."`
	TrustedProxies     []string          `opt:"trusted_proxies" default:"" help:"Comma-separated CIDRs of the reverse proxies (TLS terminators) whose X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host are believed; from any other address these headers are ignored. Behind a TLS proxy listed here, the dashboard's cookies stay Secure."`
	CertFile           string            `opt:"cert_file" default:"" help:"Certificate (PEM) of the API's own TLS listener; with key_file, ferry-api serves HTTPS instead of HTTP on bind_host:bind_port."`
	KeyFile            string            `opt:"key_file" default:"" secret:"true" help:"Private key (PEM) of cert_file."`
	ReadTimeout        int               `opt:"read_timeout" default:"60" min:"1" max:"3600" help:"Seconds a client may take to send a whole request, headers and body."`
	WriteTimeout       int               `opt:"write_timeout" default:"120" min:"1" max:"3600" help:"Seconds ferry-api may take to answer a request, from the end of its headers."`
	IdleTimeout        int               `opt:"idle_timeout" default:"120" min:"1" max:"3600" help:"Seconds an idle keep-alive connection stays open (oslo's client_socket_timeout)."`
	MetricsListen      string            `opt:"metrics_listen" default:"" help:"host:port of a separate, unauthenticated listener for GET /metrics (Prometheus). When empty, /metrics is served on the API port to callers whose token passes the metrics:get policy rule (admins by default)."`
	LoginAttempts      int               `opt:"login_attempts" default:"5" min:"1" max:"1000" help:"Failed dashboard logins allowed per user name, and (times four) per client address, within login_window; beyond them a login is answered 429 until the window has passed."`
	LoginWindow        int               `opt:"login_window" default:"300" min:"1" max:"86400" help:"Seconds over which failed dashboard logins are counted."`
	AgentUsers         map[string]string `opt:"agent_users" default:"" help:"Broker user of each region's agents, as region:user,region:user: a status report or heartbeat about a region is accepted only from its agents' user (RabbitMQ verifies each message's user_id). A region not listed is not checked."`
	CleanupGrace       int               `opt:"cleanup_grace" default:"86400" min:"0" max:"31536000" help:"Seconds a failed or cancelled transfer's leftovers (the source snapshot Ferry took, a destination image it created and never completed, its resume state) are kept for a retry before the agents remove them; 0 keeps them."`
	QuotaTransfers     int               `opt:"quota_transfers" default:"20" min:"0" max:"1000000" help:"Transfers a project may have in progress (not completed, failed or cancelled) at once; one more is refused with 413. 0 means no limit."`
	QuotaBytesInFlight Size              `opt:"quota_bytes_in_flight" default:"0" min:"0" help:"Bytes a project's transfers in progress may still have to copy (as their agents report it, plus a new Cinder volume's size); a transfer that would exceed it is refused with 413. 0 means no limit. Accepts K, M, G, T suffixes."`
	// Continuous replication (services/api/replicate).
	ReplicationTick        int  `opt:"replication_tick" default:"10" min:"1" max:"3600" help:"Seconds between the replication scheduler's passes: it starts the cycles that are due, records RPO breaches and recoveries, and cleans up deleted replications. A cycle starts at most this late."`
	ReplicationMinInterval int  `opt:"replication_min_interval" default:"60" min:"1" max:"86400" help:"Smallest interval_seconds a replication may ask for: every cycle is a transfer (a snapshot on each side, an agent slot, database rows)."`
	CycleRetention         int  `opt:"cycle_retention" default:"24" min:"0" max:"87600" help:"Hours a completed replication cycle (a transfer with replication_id) is kept before it is deleted (the newest cycle of each replication is always kept; the replication keeps its own history summary); 0 keeps them forever."`
	DrillFlatten           bool `opt:"drill_flatten" default:"true" help:"If true, the clone a DR drill makes of a replica's point is flattened in the background, so that the point can be pruned later; if false, the clone stays a copy-on-write child and pins its point until the drill volume is deleted."`
	// Signed commands (rpc.Signer).
	CommandSigningKeyFile string `opt:"command_signing_key_file" default:"/etc/ferry/pki/signing.key" help:"Ed25519 private key (ferry-manage pki signing-key) that signs every command ferry-api sends to agents; agents verify with its public key. Keep it on the ferry-api hosts only."`
	CommandTTL            int    `opt:"command_ttl" default:"3600" min:"60" max:"604800" help:"Seconds a signed command stays valid: an agent refuses a transfer.start or transfer.cancel older than this (a queued transfer whose start expired is published again with a new signature)."`
}

// Agent is the [agent] section of ferry-agent.
type Agent struct {
	Region               string   `opt:"region" default:"" help:"Region this agent serves (required for ferry-agent); it consumes the queue agent.<region>."`
	DataListen           string   `opt:"data_listen" default:"0.0.0.0:9791" help:"host:port of the TLS data port that receives streams from source agents."`
	DataAdvertise        string   `opt:"data_advertise" default:"" help:"host:port that source agents use to reach data_listen; its host must be a name in this agent's certificate. Defaults to data_listen."`
	CephConf             string   `opt:"ceph_conf" default:"/etc/ceph/ceph.conf" help:"Path of this region's Ceph configuration file."`
	CephUser             string   `opt:"ceph_user" default:"ferry" help:"Ceph client name without the client. prefix."`
	CephKeyring          string   `opt:"ceph_keyring" default:"" help:"Keyring of ceph_user; empty means the keyring named in ceph_conf."`
	Pools                []string `opt:"pools" default:"volumes" help:"Comma-separated allow-list of pools this agent may read from and write to."`
	Streams              int      `opt:"streams" default:"4" min:"1" max:"32" help:"Parallel TLS streams per transfer (the data stream's maximum is 32)."`
	ChunkSize            Size     `opt:"chunk_size" default:"4M" min:"65536" max:"67108864" help:"Size of a data chunk on the wire (about the RBD object size). Accepts K, M, G suffixes."`
	BandwidthLimit       Size     `opt:"bandwidth_limit" default:"0" min:"0" help:"Bytes per second a transfer may send (token bucket); 0 means no limit. Accepts K, M, G suffixes."`
	TCPCongestion        string   `opt:"tcp_congestion" default:"bbr" choices:"bbr,cubic,reno,default" help:"TCP congestion control of the data connections (both ends: sources dial with it, the data port's accepted connections inherit it): bbr fills a long, lossy link far better than loss-based algorithms; where the kernel does not offer the one named, cubic; default leaves the kernel's net.ipv4.tcp_congestion_control."`
	StreamReadAhead      int      `opt:"stream_read_ahead" default:"16" min:"1" max:"64" help:"Chunks a sending agent reads, zero-checks, hashes and compresses ahead of the wire, per transfer (protocol v2): more hides Ceph's read latency, each costs up to chunk_size of memory."`
	StreamWriters        int      `opt:"stream_writers" default:"16" min:"1" max:"64" help:"Chunks a receiving agent verifies and writes at once, per transfer (protocol v2): more hides Ceph's write latency on many small extents."`
	StreamWindow         Size     `opt:"stream_window" default:"64M" min:"1048576" max:"1073741824" help:"Credit a destination session grants its source (protocol v2): bytes of chunks sent and not yet acknowledged at once, whatever the streams. It bounds what this agent buffers per transfer it receives; a path's bandwidth-delay product needs at least this much to be filled. Accepts K, M, G suffixes."`
	MemoryLimit          Size     `opt:"memory_limit" default:"160M" min:"0" help:"Soft limit of the agent's Go heap (runtime/debug.SetMemoryLimit): the garbage collector works harder as the heap nears it, so that buffers freed by finished chunks do not pile up to twice what is in use. The defaults (stream_window, read-ahead, writers) keep about 130M live; Ceph's own memory (librbd caches) comes on top. 0 leaves the Go runtime's default (or GOMEMLIMIT, which always wins). Accepts K, M, G suffixes."`
	Compression          string   `opt:"compression" default:"none" choices:"none,zstd" help:"Compression of data chunks on the wire."`
	MaxTransfers         int      `opt:"max_transfers" default:"2" min:"1" max:"256" help:"Transfers this agent runs at once; the rest stay queued."`
	HeartbeatInterval    int      `opt:"heartbeat_interval" default:"10" min:"1" max:"3600" help:"Seconds between heartbeats to ferry-api."`
	ReportInterval       int      `opt:"report_interval" default:"2" min:"1" max:"60" help:"Seconds between progress reports of a running transfer."`
	MaxSessions          int      `opt:"max_sessions" default:"32" min:"1" max:"4096" help:"Destination sessions (transfers being received) this agent holds at once; a prepare beyond is refused."`
	MaxDataConnections   int      `opt:"max_data_connections" default:"128" min:"1" max:"65536" help:"Data port connections served at once; one beyond is closed before its TLS handshake."`
	MetricsListen        string   `opt:"metrics_listen" default:"" help:"host:port to serve Prometheus metrics on (/metrics); empty serves none."`
	CommandVerifyKeyFile string   `opt:"command_verify_key_file" default:"/etc/ferry/pki/signing.pub" help:"ferry-api's Ed25519 public key (signing.pub of ferry-manage pki signing-key): commands not signed with its private key are refused and dead-lettered."`
	StateKeyFile         string   `opt:"state_key_file" default:"/etc/ferry/pki/state.key" help:"The region's state key (ferry-manage pki state-key): the same file on every agent of the region. It seals what Ferry keeps in image metadata (checkpoints, snapshot records, tags), so that a pool writer cannot forge a resume point or make Ferry remove a snapshot it did not take."`
	CephOpTimeout        int      `opt:"ceph_op_timeout" default:"60" min:"5" max:"3600" help:"Seconds a Ceph operation (monitor command, OSD read or write, connecting) may take before it fails with a timeout (librados rados_mon_op_timeout, rados_osd_op_timeout, client_mount_timeout): a stalled cluster becomes an error instead of a hang."`
	HealthInterval       int      `opt:"health_interval" default:"30" min:"5" max:"3600" help:"Seconds between probes of the cluster's health (ceph health), reported with the heartbeats; a probe never delays a heartbeat."`
}

// TLS is the [tls] section: the deployment CA and this node's certificate.
type TLS struct {
	CAFile   string `opt:"ca_file" default:"/etc/ferry/pki/ca.crt" help:"CA certificate that signs every agent certificate (PEM)."`
	CertFile string `opt:"cert_file" default:"/etc/ferry/pki/agent.crt" help:"This agent's certificate (PEM), issued by ca_file."`
	KeyFile  string `opt:"key_file" default:"/etc/ferry/pki/agent.key" secret:"true" help:"Private key of cert_file (PEM)."`
}

// Size is a byte count that accepts K, M, G and T suffixes (powers of 1024,
// with an optional "i"/"iB"/"B").
type Size int64

// ParseSize parses "4M", "512K", "1GiB", "1048576".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K', 'k':
			mult = 1 << 10
		case 'M', 'm':
			mult = 1 << 20
		case 'G', 'g':
			mult = 1 << 30
		case 'T', 't':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v < 0 || (v > 0 && mult > (1<<62)/v) {
		return 0, fmt.Errorf("%q is not a size (a whole number of bytes, optionally with K, M, G or T)", s)
	}
	return Size(v * mult), nil
}

// Error is a bad value: it names the section, the option and the reason.
type Error struct {
	Section, Option, Reason string
}

func (e *Error) Error() string {
	if e.Option == "" {
		return fmt.Sprintf("[%s]: %s", e.Section, e.Reason)
	}
	return fmt.Sprintf("[%s] %s: %s", e.Section, e.Option, e.Reason)
}

// Result of a Load: the config plus the warnings an operator should see
// (unknown options, most likely typos).
type Result struct {
	Config   *Config
	Warnings []string
}

// Defaults returns a Config holding every option's default.
func Defaults() *Config {
	c := &Config{}
	forEachOption(c, func(sec string, o option) {
		if err := o.set(o.def); err != nil {
			panic(fmt.Sprintf("config: bad default for [%s] %s: %v", sec, o.name, err))
		}
	})
	return c
}

// Load reads one INI file. A missing or unreadable file, bad syntax or a bad
// value is an error; unknown options are warnings.
func Load(path string) (*Result, error) {
	if path == "" {
		return nil, errors.New("no configuration file given (use --config-file)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	res, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

// Parse parses INI data.
func Parse(data []byte) (*Result, error) {
	f, err := ini.LoadSources(ini.LoadOptions{
		AllowPythonMultilineValues: true,
		SpaceBeforeInlineComment:   true,
		PreserveSurroundedQuote:    false,
	}, data)
	if err != nil {
		return nil, fmt.Errorf("cannot parse INI: %w", err)
	}
	c := Defaults()
	res := &Result{Config: c}
	known := map[string]map[string]option{}
	forEachOption(c, func(sec string, o option) {
		if known[sec] == nil {
			known[sec] = map[string]option{}
		}
		known[sec][o.name] = o
	})
	for _, s := range f.Sections() {
		opts, ok := known[s.Name()]
		if !ok {
			if len(s.Keys()) > 0 {
				res.Warnings = append(res.Warnings, fmt.Sprintf("unknown section [%s] ignored", s.Name()))
			}
			continue
		}
		for _, k := range s.Keys() {
			o, ok := opts[k.Name()]
			if !ok {
				res.Warnings = append(res.Warnings, fmt.Sprintf("unknown option [%s] %s ignored", s.Name(), k.Name()))
				continue
			}
			if err := o.set(k.Value()); err != nil {
				return nil, &Error{Section: s.Name(), Option: o.name, Reason: err.Error()}
			}
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return res, nil
}

// validate checks values that do not depend on which binary reads them.
func (c *Config) validate() error {
	if err := checkTransportURL(c.Default.TransportURL); err != nil {
		return &Error{Section: "DEFAULT", Option: "transport_url", Reason: err.Error()}
	}
	for _, u := range []struct{ opt, v string }{
		{"auth_url", c.KeystoneAuthtoken.AuthURL},
		{"www_authenticate_uri", c.KeystoneAuthtoken.WWWAuthenticateURI},
	} {
		if u.v == "" {
			continue
		}
		if err := checkHTTPURL(u.v); err != nil {
			return &Error{Section: "keystone_authtoken", Option: u.opt, Reason: err.Error()}
		}
	}
	for _, a := range []struct{ opt, v string }{
		{"data_listen", c.Agent.DataListen},
		{"data_advertise", c.Agent.DataAdvertise},
	} {
		if a.v == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a.v); err != nil || port == "" {
			return &Error{Section: "agent", Option: a.opt, Reason: fmt.Sprintf("%q is not host:port", a.v)}
		}
	}
	if len(c.Notifications.Topics) != 1 || c.Notifications.Topics[0] == "" {
		return &Error{Section: "oslo_messaging_notifications", Option: "topics", Reason: "exactly one topic is supported"}
	}
	for _, p := range c.API.TrustedProxies {
		if _, err := ParseCIDROrIP(p); err != nil {
			return &Error{Section: "api", Option: "trusted_proxies", Reason: err.Error()}
		}
	}
	if (c.API.CertFile == "") != (c.API.KeyFile == "") {
		return &Error{Section: "api", Option: "cert_file", Reason: "cert_file and key_file go together"}
	}
	if a := c.API.MetricsListen; a != "" {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return &Error{Section: "api", Option: "metrics_listen", Reason: fmt.Sprintf("%q is not host:port", a)}
		}
	}
	if c.API.MaxPageSize < c.API.DefaultPageSize {
		return &Error{Section: "api", Option: "max_page_size", Reason: "must be at least default_page_size"}
	}
	if _, err := c.Cinder.VolumeTypes(); err != nil {
		return &Error{Section: "cinder", Option: "volume_type_map", Reason: err.Error()}
	}
	for _, p := range c.Agent.Pools {
		if p == "" || strings.ContainsAny(p, "/@ ") {
			return &Error{Section: "agent", Option: "pools", Reason: fmt.Sprintf("%q is not a pool name", p)}
		}
	}
	return nil
}

// ParseCIDROrIP parses a CIDR ("10.0.0.0/8") or a single address
// ("192.0.2.7", taken as /32 or /128).
func ParseCIDROrIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an address", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ForAPI checks what ferry-api needs beyond the generic checks.
func (c *Config) ForAPI() error {
	if c.Database.Connection == "" {
		return &Error{Section: "database", Option: "connection", Reason: "required by ferry-api"}
	}
	k := c.KeystoneAuthtoken
	for _, r := range []struct{ opt, v string }{
		{"auth_url", k.AuthURL}, {"username", k.Username}, {"password", k.Password}, {"project_name", k.ProjectName},
	} {
		if r.v == "" {
			return &Error{Section: "keystone_authtoken", Option: r.opt, Reason: "required by ferry-api (the service user validates tokens)"}
		}
	}
	return nil
}

// ForAgent checks what ferry-agent needs beyond the generic checks.
func (c *Config) ForAgent() error {
	a := c.Agent
	if a.Region == "" {
		return &Error{Section: "agent", Option: "region", Reason: "required by ferry-agent"}
	}
	if len(a.Pools) == 0 {
		return &Error{Section: "agent", Option: "pools", Reason: "required by ferry-agent (an empty allow-list allows nothing)"}
	}
	for _, r := range []struct{ opt, v string }{
		{"ca_file", c.TLS.CAFile}, {"cert_file", c.TLS.CertFile}, {"key_file", c.TLS.KeyFile},
	} {
		if r.v == "" {
			return &Error{Section: "tls", Option: r.opt, Reason: "required by ferry-agent (data streams use mutual TLS)"}
		}
	}
	if a.StateKeyFile == "" {
		return &Error{Section: "agent", Option: "state_key_file", Reason: "required by ferry-agent (it seals the state kept in image metadata)"}
	}
	if a.CommandVerifyKeyFile == "" {
		return &Error{Section: "agent", Option: "command_verify_key_file", Reason: "required by ferry-agent (it accepts only commands signed by ferry-api)"}
	}
	return nil
}

// Hostname returns [DEFAULT] host or, when empty, the machine's hostname.
func (c *Config) Hostname() string {
	if c.Default.Host != "" {
		return c.Default.Host
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

func checkTransportURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", redactURLError(err))
	}
	if u.Scheme != "rabbit" && u.Scheme != "amqp" && u.Scheme != "amqps" {
		return fmt.Errorf("scheme %q not supported (want rabbit://)", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("no host")
	}
	return nil
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", redactURLError(err))
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL", s)
	}
	return nil
}

// redactURLError drops the URL (which may hold a password) from a parse error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// option is one settable field found by reflection.
type option struct {
	name, def, help, choices, min, max string
	secret                             bool
	field                              reflect.Value
}

func forEachOption(c *Config, fn func(section string, o option)) {
	cv := reflect.ValueOf(c).Elem()
	ct := cv.Type()
	for i := range ct.NumField() {
		sec := ct.Field(i).Tag.Get("section")
		sv := cv.Field(i)
		st := sv.Type()
		for j := range st.NumField() {
			f := st.Field(j)
			name := f.Tag.Get("opt")
			if name == "" {
				continue
			}
			fn(sec, option{
				name: name, def: f.Tag.Get("default"), help: f.Tag.Get("help"),
				choices: f.Tag.Get("choices"), min: f.Tag.Get("min"), max: f.Tag.Get("max"),
				secret: f.Tag.Get("secret") == "true", field: sv.Field(j),
			})
		}
	}
}

var sizeType = reflect.TypeOf(Size(0))

func (o option) typeName() string {
	switch {
	case o.field.Type() == sizeType:
		return "size value"
	case o.field.Kind() == reflect.Bool:
		return "boolean value"
	case o.field.Kind() == reflect.Int:
		return "integer value"
	case o.field.Kind() == reflect.Slice:
		return "list value"
	case o.field.Kind() == reflect.Map:
		return "dict value"
	default:
		return "string value"
	}
}

func (o option) set(raw string) error {
	v := strings.TrimSpace(raw)
	switch {
	case o.field.Type() == sizeType:
		n, err := ParseSize(v)
		if err != nil {
			return err
		}
		if err := o.bounds(int64(n)); err != nil {
			return err
		}
		o.field.SetInt(int64(n))
	case o.field.Kind() == reflect.Bool:
		b, err := parseBool(v)
		if err != nil {
			return err
		}
		o.field.SetBool(b)
	case o.field.Kind() == reflect.Int:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
		if err := o.bounds(n); err != nil {
			return err
		}
		o.field.SetInt(n)
	case o.field.Kind() == reflect.Slice:
		var items []string
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				items = append(items, p)
			}
		}
		o.field.Set(reflect.ValueOf(items))
	case o.field.Kind() == reflect.Map:
		// oslo.config's DictOpt: key:value,key:value.
		m := map[string]string{}
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			k, val, ok := strings.Cut(p, ":")
			if !ok || strings.TrimSpace(k) == "" {
				return fmt.Errorf("%q is not a key:value pair", p)
			}
			m[strings.TrimSpace(k)] = strings.TrimSpace(val)
		}
		o.field.Set(reflect.ValueOf(m))
	default:
		if o.choices != "" && !slices.Contains(strings.Split(o.choices, ","), v) {
			return fmt.Errorf("%q is not one of %s", v, strings.ReplaceAll(o.choices, ",", ", "))
		}
		o.field.SetString(v)
	}
	return nil
}

func (o option) bounds(n int64) error {
	if o.min != "" {
		if m, _ := strconv.ParseInt(o.min, 10, 64); n < m {
			return fmt.Errorf("%d is below the minimum %s", n, o.min)
		}
	}
	if o.max != "" {
		if m, _ := strconv.ParseInt(o.max, 10, 64); n > m {
			return fmt.Errorf("%d is above the maximum %s", n, o.max)
		}
	}
	return nil
}

// parseBool accepts the spellings oslo.config accepts.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "1", "yes", "on":
		return true, nil
	case "false", "0", "no", "off", "":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (true or false)", s)
}
