package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestParseValues(t *testing.T) {
	res, err := Parse([]byte(`
[DEFAULT]
transport_url = rabbit://u:p%40ss@mq1:5672,mq2:5672/ferry
debug = True

[database]
connection = mysql+pymysql://ferry:secret@db/ferry

[agent]
region = RegionTwo
pools = volumes, backups ,
streams = 8
chunk_size = 8M
bandwidth_limit = 100MiB
compression = zstd

[cinder]
volume_pools = RegionOne:volumes, RegionTwo : rbd-volumes
backend_hosts = RegionOne:cinder-1@ceph#ceph
`))
	if err != nil {
		t.Fatal(err)
	}
	c := res.Config
	if !c.Default.Debug || c.Database.Connection != "mysql+pymysql://ferry:secret@db/ferry" {
		t.Errorf("DEFAULT/database not read: %+v %+v", c.Default, c.Database)
	}
	if c.Agent.Region != "RegionTwo" || c.Agent.Streams != 8 || c.Agent.Compression != "zstd" {
		t.Errorf("agent not read: %+v", c.Agent)
	}
	if !reflect.DeepEqual(c.Agent.Pools, []string{"volumes", "backups"}) {
		t.Errorf("pools = %q", c.Agent.Pools)
	}
	if want := map[string]string{"RegionOne": "volumes", "RegionTwo": "rbd-volumes"}; !reflect.DeepEqual(c.Cinder.VolumePools, want) {
		t.Errorf("volume_pools = %v, want %v", c.Cinder.VolumePools, want)
	}
	if h := c.Cinder.BackendHosts["RegionOne"]; h != "cinder-1@ceph#ceph" || len(c.Cinder.BackupPools) != 0 {
		t.Errorf("backend_hosts = %v, backup_pools = %v", c.Cinder.BackendHosts, c.Cinder.BackupPools)
	}
	if c.Agent.ChunkSize != 8<<20 || c.Agent.BandwidthLimit != 100<<20 {
		t.Errorf("sizes = %d %d", c.Agent.ChunkSize, c.Agent.BandwidthLimit)
	}
	// Untouched options keep their defaults.
	if c.API.BindPort != 9790 || c.Agent.MaxTransfers != 2 || c.KeystoneAuthtoken.UserDomainName != "Default" {
		t.Errorf("defaults lost: %+v %+v", c.API, c.Agent)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("unexpected warnings %q", res.Warnings)
	}
}

// The hardening options: defaults, and a list of proxies parsed.
func TestAPIHardeningOptions(t *testing.T) {
	d := Defaults()
	if a := d.API; a.ReadTimeout != 60 || a.WriteTimeout != 120 || a.IdleTimeout != 120 || len(a.TrustedProxies) != 0 ||
		a.MetricsListen != "" || a.CertFile != "" || a.LoginAttempts != 5 || a.LoginWindow != 300 {
		t.Errorf("[api] defaults %+v", a)
	}
	if d.KeystoneAuthtoken.HTTPRequestTimeout != 10 || d.Cinder.Timeout != 60 {
		t.Errorf("timeouts %d %d", d.KeystoneAuthtoken.HTTPRequestTimeout, d.Cinder.Timeout)
	}
	res, err := Parse([]byte("[api]\ntrusted_proxies = 10.0.0.0/8, 192.0.2.7,2001:db8::/32\ncert_file = /c\nkey_file = /k\nmetrics_listen = 127.0.0.1:9799\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p := res.Config.API.TrustedProxies; len(p) != 3 || p[1] != "192.0.2.7" {
		t.Errorf("trusted_proxies %q", p)
	}
	if n, err := ParseCIDROrIP("192.0.2.7"); err != nil || n.Bits() != 32 {
		t.Errorf("a single address: %v %v", n, err)
	}
}

func TestParseErrorsNameSectionAndOption(t *testing.T) {
	cases := []struct {
		name, ini, want string
	}{
		{"int", "[agent]\nstreams = many\n", `[agent] streams: "many" is not an integer`},
		{"min", "[agent]\nstreams = 0\n", "[agent] streams: 0 is below the minimum 1"},
		{"max", "[api]\nbind_port = 70000\n", "[api] bind_port: 70000 is above the maximum 65535"},
		{"bool", "[DEFAULT]\ndebug = maybe\n", `[DEFAULT] debug: "maybe" is not a boolean`},
		{"choice", "[agent]\ncompression = lz4\n", `[agent] compression: "lz4" is not one of none, zstd`},
		{"size", "[agent]\nchunk_size = 4X\n", `[agent] chunk_size: "4X" is not a size`},
		{"size min", "[agent]\nchunk_size = 1K\n", "[agent] chunk_size: 1024 is below the minimum 65536"},
		{"transport scheme", "[DEFAULT]\ntransport_url = kafka://h/\n", `[DEFAULT] transport_url: scheme "kafka" not supported`},
		{"transport host", "[DEFAULT]\ntransport_url = rabbit:///\n", "[DEFAULT] transport_url: no host"},
		{"auth_url", "[keystone_authtoken]\nauth_url = 127.0.0.1:5000\n", "[keystone_authtoken] auth_url:"},
		{"listen", "[agent]\ndata_listen = 9791\n", `[agent] data_listen: "9791" is not host:port`},
		{"pool", "[agent]\npools = a/b\n", `[agent] pools: "a/b" is not a pool name`},
		{"read-ahead", "[agent]\nstream_read_ahead = 65\n", "[agent] stream_read_ahead"},
		{"writers", "[agent]\nstream_writers = 0\n", "[agent] stream_writers"},
		{"page", "[api]\ndefault_page_size = 50\nmax_page_size = 10\n", "[api] max_page_size: must be at least default_page_size"},
		{"syntax", "[agent\nregion = x\n", "cannot parse INI"},
		{"dict", "[cinder]\nvolume_pools = RegionOne\n", `[cinder] volume_pools: "RegionOne" is not a key:value pair`},
		{"trusted proxy", "[api]\ntrusted_proxies = 10.0.0.0/8,10.0.0.0/33\n", `[api] trusted_proxies: "10.0.0.0/33" is not a CIDR or an address`},
		{"trusted proxy name", "[api]\ntrusted_proxies = proxy.example.org\n", `[api] trusted_proxies: "proxy.example.org" is not a CIDR`},
		{"cert without key", "[api]\ncert_file = /etc/ferry/api.crt\n", "[api] cert_file: cert_file and key_file go together"},
		{"metrics listen", "[api]\nmetrics_listen = 9799\n", `[api] metrics_listen: "9799" is not host:port`},
		{"read timeout", "[api]\nread_timeout = 0\n", "[api] read_timeout: 0 is below the minimum 1"},
		{"cinder timeout", "[cinder]\ntimeout = 0\n", "[cinder] timeout: 0 is below the minimum 1"},
		{"keystone timeout", "[keystone_authtoken]\nhttp_request_timeout = 601\n", "[keystone_authtoken] http_request_timeout: 601 is above the maximum 600"},
		{"notification driver", "[oslo_messaging_notifications]\ndriver = log\n", `[oslo_messaging_notifications] driver: "log" is not one of messagingv2, noop`},
		{"notification topics", "[oslo_messaging_notifications]\ntopics = a,b\n", "[oslo_messaging_notifications] topics: exactly one topic"},
		{"type map syntax", "[cinder]\nvolume_type_map = RegionOne:ssd\n", `[cinder] volume_type_map: "RegionOne:ssd" is not region:type=region:type`},
		{"type map no type", "[cinder]\nvolume_type_map = RegionOne:ssd=RegionTwo\n", `"RegionOne:ssd=RegionTwo" is not region:type=region:type`},
		{"type map two =", "[cinder]\nvolume_type_map = RegionOne:a=b=RegionTwo:c\n", `is not region:type=region:type`},
		{"type map same region", "[cinder]\nvolume_type_map = RegionOne:a=RegionOne:b\n", `maps a type within region RegionOne`},
		{"type map twice", "[cinder]\nvolume_type_map = RegionOne:a=RegionTwo:b,RegionOne:a=RegionTwo:c\n", `type a of RegionOne is mapped twice for RegionTwo (b and c)`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.ini))
			if err == nil {
				t.Fatalf("no error for %q", tc.ini)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// [cinder] volume_type_map: source region and type, destination region →
// destination type; a type name may contain ':' (the region may not).
func TestVolumeTypeMap(t *testing.T) {
	res, err := Parse([]byte("[cinder]\nvolume_type_map = RegionOne:ssd=RegionTwo:fast-ssd, RegionTwo : fast-ssd = RegionOne : ssd,RegionOne:tier:gold=RegionThree:gold ,\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := res.Config.Cinder.VolumeTypes()
	want := map[VolumeTypeRoute]string{
		{"RegionOne", "ssd", "RegionTwo"}:         "fast-ssd",
		{"RegionTwo", "fast-ssd", "RegionOne"}:    "ssd",
		{"RegionOne", "tier:gold", "RegionThree"}: "gold",
	}
	if err != nil || !reflect.DeepEqual(m, want) {
		t.Errorf("VolumeTypes() = %v, %v; want %v", m, err, want)
	}
	if m, err := Defaults().Cinder.VolumeTypes(); err != nil || len(m) != 0 {
		t.Errorf("default VolumeTypes() = %v, %v", m, err)
	}
}

func TestTransportPasswordNotInError(t *testing.T) {
	_, err := Parse([]byte("[DEFAULT]\ntransport_url = rabbit://u:topsecret@h:bad port/\n"))
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), "topsecret") {
		t.Errorf("password leaked: %v", err)
	}
}

func TestUnknownOptionsWarn(t *testing.T) {
	res, err := Parse([]byte("[agent]\nregon = RegionOne\n[nova]\nx = 1\n[empty]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"unknown option [agent] regon ignored", "unknown section [nova] ignored"}
	if !reflect.DeepEqual(res.Warnings, want) {
		t.Errorf("warnings = %q, want %q", res.Warnings, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.conf"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want not-exist", err)
	}
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), "--config-file") {
		t.Errorf("empty path: %v", err)
	}
}

func TestForBinaries(t *testing.T) {
	c := Defaults()
	var ce *Error
	if err := c.ForAgent(); !errors.As(err, &ce) || ce.Section != "agent" || ce.Option != "region" {
		t.Errorf("ForAgent = %v", err)
	}
	c.Agent.Region = "RegionOne"
	if err := c.ForAgent(); err != nil {
		t.Errorf("ForAgent with region = %v", err)
	}
	if err := c.ForAPI(); !errors.As(err, &ce) || ce.Option != "auth_url" {
		t.Errorf("ForAPI = %v", err)
	}
	c.KeystoneAuthtoken.AuthURL = "http://127.0.0.1:5000/v3"
	if err := c.ForAPI(); !errors.As(err, &ce) || ce.Option != "password" {
		t.Errorf("ForAPI without password = %v", err)
	}
	c.KeystoneAuthtoken.Password = "x"
	if err := c.ForAPI(); err != nil {
		t.Errorf("ForAPI complete = %v", err)
	}
}

func TestParseSize(t *testing.T) {
	cases := map[string]int64{"0": 0, "1": 1, "4K": 4096, "4KiB": 4096, "4M": 4 << 20, "1G": 1 << 30, "2T": 2 << 40, " 8m ": 8 << 20}
	for in, want := range cases {
		got, err := ParseSize(in)
		if err != nil || int64(got) != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "M", "1.5M", "9999999999999T", "4X"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

// The sample parses back to the defaults, commented or not: the sample
// cannot show a default the parser does not use.
func TestSampleRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSample(&buf); err != nil {
		t.Fatal(err)
	}
	res, err := Parse(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Config, Defaults()) {
		t.Error("commented sample does not parse to the defaults")
	}
	uncommented := regexp.MustCompile(`(?m)^#([a-z_]+ = )`).ReplaceAll(buf.Bytes(), []byte("$1"))
	if bytes.Equal(uncommented, buf.Bytes()) {
		t.Fatal("no option lines found in the sample")
	}
	res, err = Parse(uncommented)
	if err != nil {
		t.Fatalf("uncommented sample: %v", err)
	}
	if !reflect.DeepEqual(res.Config, Defaults()) || len(res.Warnings) != 0 {
		t.Errorf("uncommented sample differs from defaults (warnings %q)", res.Warnings)
	}
	for _, want := range []string{"[DEFAULT]", "#transport_url = ", "[database]", "#connection = sqlite:////var/lib/ferry/ferry.sqlite", "[keystone_authtoken]", "[agent]", "#streams = 4", "[tls]"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("sample lacks %q", want)
		}
	}
}

// The committed sample is the generator's output (lint checks the same).
func TestCommittedSampleIsCurrent(t *testing.T) {
	committed, err := os.ReadFile("../../../etc/ferry/ferry.conf.sample")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteSample(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, buf.Bytes()) {
		t.Error("etc/ferry/ferry.conf.sample is stale: run `go run ./cmd/ferry-manage config sample > etc/ferry/ferry.conf.sample`")
	}
}
