package db

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func TestParseConnection(t *testing.T) {
	const sqliteParams = "_pragma=foreign_keys%281%29&_pragma=busy_timeout%2810000%29&_pragma=journal_mode%28WAL%29&_pragma=synchronous%28NORMAL%29&_txlock=immediate"
	tests := []struct {
		name    string
		in      string
		dialect Dialect
		dsn     string // exact, or "" to skip
		check   func(t *testing.T, dsn string)
		wantErr string // substring of the error, "" for success
	}{
		{name: "sqlite relative", in: "sqlite:///relative/path.sqlite", dialect: DialectSQLite,
			dsn: "relative/path.sqlite?" + sqliteParams},
		{name: "sqlite absolute", in: "sqlite:////var/lib/ferry/ferry.sqlite", dialect: DialectSQLite,
			dsn: "/var/lib/ferry/ferry.sqlite?" + sqliteParams},
		{name: "sqlite escaped space", in: "sqlite:////tmp/my%20dir/f.db", dialect: DialectSQLite,
			dsn: "/tmp/my dir/f.db?" + sqliteParams},
		{name: "sqlite memory", in: "sqlite://", dialect: DialectSQLite,
			dsn: ":memory:?_pragma=foreign_keys%281%29&_pragma=busy_timeout%2810000%29&_txlock=immediate"},
		{name: "sqlite :memory:", in: "sqlite:///:memory:", dialect: DialectSQLite,
			check: func(t *testing.T, dsn string) {
				if !strings.HasPrefix(dsn, ":memory:?") {
					t.Errorf("dsn %q is not in-memory", dsn)
				}
			}},
		{name: "sqlite pysqlite driver", in: "sqlite+pysqlite:///x.db", dialect: DialectSQLite,
			dsn: "x.db?" + sqliteParams},
		{name: "sqlite with host", in: "sqlite://host/x.db", wantErr: "no host"},
		{name: "sqlite with param", in: "sqlite:///x.db?mode=ro", wantErr: `parameter "mode"`},
		{name: "sqlite question mark in path", in: "sqlite:///x%3Fy.db", wantErr: "must not contain"},
		{name: "mysql pymysql", in: "mysql+pymysql://ferry:secret@db.example:3307/ferry?charset=utf8", dialect: DialectMySQL,
			check: mysqlCheck("ferry", "secret", "tcp", "db.example:3307", "ferry")},
		{name: "mysql default port", in: "mysql://root:@127.0.0.1/ferry", dialect: DialectMySQL,
			check: mysqlCheck("root", "", "tcp", "127.0.0.1:3306", "ferry")},
		{name: "mysql escaped password", in: "mysql+pymysql://ferry:p%40ss%2Fw%3Ard%25%23x@db/ferry", dialect: DialectMySQL,
			check: mysqlCheck("ferry", "p@ss/w:rd%#x", "tcp", "db:3306", "ferry")},
		{name: "mysql ipv6", in: "mysql://u:p@[::1]:3306/ferry", dialect: DialectMySQL,
			check: mysqlCheck("u", "p", "tcp", "[::1]:3306", "ferry")},
		{name: "mysql unix socket", in: "mysql+pymysql://u:p@/ferry?unix_socket=/run/mysqld/mysqld.sock", dialect: DialectMySQL,
			check: mysqlCheck("u", "p", "unix", "/run/mysqld/mysqld.sock", "ferry")},
		{name: "mariadb devstack plugin", in: "mariadb+pymysql://u:p@h/ferry?charset=utf8&plugin=dbcounter", dialect: DialectMySQL,
			check: mysqlCheck("u", "p", "tcp", "h:3306", "ferry")},
		{name: "mysql no database", in: "mysql+pymysql://u:p@h:3306/", wantErr: "database name"},
		{name: "mysql bad charset", in: "mysql://u:p@h/db?charset=latin1", wantErr: "charset"},
		{name: "mysql unknown param", in: "mysql://u:p@h/db?read_default_file=/etc/my.cnf", wantErr: `"read_default_file"`},
		{name: "mysql bad port", in: "mysql://u:p@h:99999/db", wantErr: "invalid port"},
		{name: "mysql unknown driver", in: "mysql+oursql://u:p@h/db", wantErr: `driver "oursql"`},
		{name: "postgresql", in: "postgresql://postgres@127.0.0.1:5432/ferry", dialect: DialectPostgres,
			dsn: "postgres://postgres@127.0.0.1:5432/ferry?connect_timeout=10"},
		{name: "postgresql psycopg2 escaped password", in: "postgresql+psycopg2://ferry:p%40ss%2Fw@db/ferry?sslmode=disable&plugin=dbcounter", dialect: DialectPostgres,
			check: func(t *testing.T, dsn string) {
				u, err := url.Parse(dsn)
				if err != nil {
					t.Fatal(err)
				}
				pw, _ := u.User.Password()
				if pw != "p@ss/w" || u.Host != "db" || u.Path != "/ferry" || u.Query().Get("sslmode") != "disable" || u.Query().Has("plugin") {
					t.Errorf("dsn %q parsed as password %q host %q path %q query %v", dsn, pw, u.Host, u.Path, u.Query())
				}
			}},
		{name: "postgres keeps timeout", in: "postgres://u@h/db?connect_timeout=3", dialect: DialectPostgres,
			dsn: "postgres://u@h/db?connect_timeout=3"},
		{name: "postgres bad encoding", in: "postgresql://u@h/db?client_encoding=latin1", wantErr: "client_encoding"},
		{name: "postgres nested path", in: "postgresql://u@h/db/x", wantErr: "single database"},
		{name: "unknown scheme", in: "oracle://u:secret@h/db", wantErr: `unknown database scheme "oracle"`},
		{name: "no scheme", in: "/var/lib/ferry.sqlite", wantErr: "not a URL"},
		{name: "empty", in: "", wantErr: "not a URL"},
		{name: "bad escape", in: "mysql://u:se%zzcret@h/db", wantErr: "invalid %-escape"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dialect, dsn, err := ParseConnection(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseConnection(%q) = %q, %q; want error", tt.in, dialect, dsn)
				}
				if !errors.Is(err, ErrInvalidConnection) {
					t.Errorf("error %v does not wrap ErrInvalidConnection", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not mention %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "cret") {
					t.Errorf("error %q leaks the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConnection(%q): %v", tt.in, err)
			}
			if dialect != tt.dialect {
				t.Errorf("dialect = %q, want %q", dialect, tt.dialect)
			}
			if tt.dsn != "" && dsn != tt.dsn {
				t.Errorf("dsn = %q\nwant  %q", dsn, tt.dsn)
			}
			if tt.check != nil {
				tt.check(t, dsn)
			}
		})
	}
}

func mysqlCheck(user, pass, netw, addr, dbname string) func(*testing.T, string) {
	return func(t *testing.T, dsn string) {
		t.Helper()
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			t.Fatalf("ParseDSN(%q): %v", dsn, err)
		}
		if cfg.User != user || cfg.Passwd != pass || cfg.Net != netw || cfg.Addr != addr || cfg.DBName != dbname {
			t.Errorf("dsn %q: user %q pass %q net %q addr %q db %q", dsn, cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName)
		}
		if !cfg.ParseTime || cfg.Loc != time.UTC || !cfg.ClientFoundRows || cfg.Params["charset"] != "utf8mb4" {
			t.Errorf("dsn %q: parseTime %v loc %v clientFoundRows %v params %v", dsn, cfg.ParseTime, cfg.Loc, cfg.ClientFoundRows, cfg.Params)
		}
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mysql+pymysql://ferry:secret@db:3306/ferry?charset=utf8", "mysql+pymysql://ferry:***@db:3306/ferry?charset=utf8"},
		{"mysql+pymysql://ferry:p%40ss@db/ferry", "mysql+pymysql://ferry:***@db/ferry"},
		{"mysql+pymysql://root:@127.0.0.1/ferry", "mysql+pymysql://root:***@127.0.0.1/ferry"},
		{"postgresql://postgres@127.0.0.1/ferry", "postgresql://postgres@127.0.0.1/ferry"},
		{"postgresql://u@h/db?password=secret&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"},
		{"sqlite:////var/lib/ferry.sqlite", "sqlite:////var/lib/ferry.sqlite"},
		{"mysql://u:se%zzcret@h/db", "mysql://<malformed URL>"},
		{"u:secret@h/db", "<malformed URL>"},
	}
	for _, tt := range tests {
		got := Redact(tt.in)
		if got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if strings.Contains(got, "secret") || strings.Contains(got, "p%40ss") {
			t.Errorf("Redact(%q) = %q leaks the password", tt.in, got)
		}
	}
}

func TestOpenErrorsNeverShowPassword(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name, in, want string
	}{
		{"unknown scheme", "db2://u:s3cr3tpw@h/db", "unknown database scheme"},
		{"missing sqlite directory", "sqlite:///" + filepath.Join(t.TempDir(), "no", "such", "dir", "x.sqlite"), "db: connect to"},
		// Port 1 on loopback: nothing listens, the dial fails at once.
		{"unreachable mysql", "mysql+pymysql://root:s3cr3tpw@127.0.0.1:1/ferry", "db: connect to mysql+pymysql://root:"},
		{"unreachable postgres", "postgresql://u:s3cr3tpw@127.0.0.1:1/ferry", "db: connect to postgresql://u:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Open(ctx, tt.in)
			if err == nil {
				d.Close()
				t.Fatalf("Open(%q) succeeded", tt.in)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "s3cr3tpw") {
				t.Errorf("error %q leaks the password", err)
			}
		})
	}
}

func TestOpenSQLiteSettings(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ferry.sqlite")
	d, err := Open(ctx, "sqlite:///"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Dialect() != DialectSQLite || d.String() != "sqlite:///"+path {
		t.Errorf("Dialect %q String %q", d.Dialect(), d.String())
	}
	if err := d.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	for pragma, want := range map[string]string{
		"journal_mode": "wal",
		"foreign_keys": "1",
		"busy_timeout": "10000",
		"synchronous":  "1",
	} {
		var got string
		if err := d.gorm.Raw("PRAGMA " + pragma).Scan(&got).Error; err != nil {
			t.Fatalf("PRAGMA %s: %v", pragma, err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %q, want %q", pragma, got, want)
		}
	}
	if n := d.sql.Stats().MaxOpenConnections; n != 1 {
		t.Errorf("MaxOpenConnections = %d, want 1", n)
	}
}
