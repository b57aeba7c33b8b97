package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/glebarez/sqlite"
	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	gormmysql "gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
)

// Dialect names the database engine behind a connection URL.
type Dialect string

// The supported dialects.
const (
	DialectSQLite   Dialect = "sqlite"
	DialectMySQL    Dialect = "mysql" // MySQL and MariaDB
	DialectPostgres Dialect = "postgres"
)

// SQLite settings applied to every connection of a file database.
const (
	sqliteBusyTimeout = 10 * time.Second
	sqliteMemoryDSN   = ":memory:"
)

// Server connection defaults (oslo.db's are close to these).
const (
	defaultConnectTimeout  = 10 * time.Second
	defaultMaxOpenConns    = 20
	defaultMaxIdleConns    = 5
	defaultConnMaxLifetime = time.Hour
	defaultConnMaxIdleTime = 5 * time.Minute
	defaultSlowThreshold   = time.Second
)

// Python driver suffixes accepted in oslo.db/SQLAlchemy scheme names
// ("mysql+pymysql"); the suffix only names the Python driver, so it is
// ignored once recognised.
var (
	mysqlDrivers    = []string{"", "pymysql", "mysqldb", "mysqlconnector", "mariadbconnector"}
	postgresDrivers = []string{"", "psycopg2", "psycopg", "pg8000"}
)

// ParseConnection translates an oslo.db style connection URL into a dialect
// and a Go driver DSN:
//
//	sqlite://                             in-memory database (tests)
//	sqlite:///relative/path.sqlite        file relative to the working directory
//	sqlite:////absolute/path.sqlite       absolute path
//	mysql+pymysql://user:pass@host[:port]/db[?charset=utf8]   (also mysql://, mariadb://)
//	postgresql://user:pass@host[:port]/db  (also postgresql+psycopg2://, postgres://)
//
// User names and passwords are URL-unescaped, so a password holding '@', '/',
// ':' or '%' is written escaped (p%40ss). Errors wrap ErrInvalidConnection and
// never contain the password. The returned DSN does contain it.
func ParseConnection(connection string) (Dialect, string, error) {
	scheme, _, ok := strings.Cut(connection, "://")
	if !ok || scheme == "" {
		return "", "", fmt.Errorf("%w: not a URL of the form dialect[+driver]://… (for example sqlite:////var/lib/ferry/ferry.sqlite)", ErrInvalidConnection)
	}
	u, err := url.Parse(connection)
	if err != nil {
		return "", "", fmt.Errorf("%w: %s: %s", ErrInvalidConnection, Redact(connection), describeURLError(err))
	}
	base, driver, _ := strings.Cut(strings.ToLower(u.Scheme), "+")
	switch base {
	case "sqlite":
		if driver != "" && driver != "pysqlite" {
			return "", "", fmt.Errorf("%w: unsupported driver %q in scheme %q", ErrInvalidConnection, driver, u.Scheme)
		}
		dsn, err := sqliteDSN(u)
		return DialectSQLite, dsn, err
	case "mysql", "mariadb":
		if !contains(mysqlDrivers, driver) {
			return "", "", fmt.Errorf("%w: unsupported driver %q in scheme %q", ErrInvalidConnection, driver, u.Scheme)
		}
		dsn, err := mysqlDSN(u)
		return DialectMySQL, dsn, err
	case "postgresql", "postgres":
		if !contains(postgresDrivers, driver) {
			return "", "", fmt.Errorf("%w: unsupported driver %q in scheme %q", ErrInvalidConnection, driver, u.Scheme)
		}
		dsn, err := postgresDSN(u)
		return DialectPostgres, dsn, err
	}
	return "", "", fmt.Errorf("%w: unknown database scheme %q (want sqlite, mysql+pymysql or postgresql)", ErrInvalidConnection, u.Scheme)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// describeURLError says what is wrong with a URL without repeating it: the
// net/url error text quotes the URL, password included.
func describeURLError(err error) string {
	var escErr url.EscapeError
	if errors.As(err, &escErr) {
		return "invalid %-escape"
	}
	var hostErr url.InvalidHostError
	if errors.As(err, &hostErr) {
		return "invalid character in host"
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		msg := uerr.Err.Error()
		if strings.HasPrefix(msg, "invalid port") {
			return "invalid port"
		}
		return strings.TrimPrefix(msg, "net/url: ")
	}
	return "malformed URL"
}

func sqliteDSN(u *url.URL) (string, error) {
	if u.User != nil || u.Host != "" {
		return "", fmt.Errorf("%w: sqlite URL takes no host or user: write sqlite:///relative/path or sqlite:////absolute/path", ErrInvalidConnection)
	}
	for k := range u.Query() {
		return "", fmt.Errorf("%w: unsupported sqlite connection parameter %q", ErrInvalidConnection, k)
	}
	// sqlite:///rel → Path "/rel"; sqlite:////abs → Path "//abs".
	path := strings.TrimPrefix(u.Path, "/")
	params := url.Values{}
	params.Add("_pragma", "foreign_keys(1)")
	params.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeout.Milliseconds()))
	// Take the write lock at BEGIN: a deferred transaction that reads and
	// then writes can fail with SQLITE_BUSY without waiting when another
	// process (ferry-manage) wrote in between.
	params.Set("_txlock", "immediate")
	if path == "" || path == ":memory:" {
		return sqliteMemoryDSN + "?" + params.Encode(), nil
	}
	if strings.ContainsAny(path, "?#") {
		return "", fmt.Errorf("%w: sqlite path %q must not contain '?' or '#'", ErrInvalidConnection, path)
	}
	params.Add("_pragma", "journal_mode(WAL)")
	params.Add("_pragma", "synchronous(NORMAL)")
	return path + "?" + params.Encode(), nil
}

func mysqlDSN(u *url.URL) (string, error) {
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	// RowsAffected counts matched rows, not changed ones: the store's
	// conditional UPDATEs must see a match even when no value changes.
	cfg.ClientFoundRows = true
	cfg.Timeout = defaultConnectTimeout
	cfg.Params = map[string]string{"charset": "utf8mb4"}
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
	}
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	if cfg.DBName == "" || strings.Contains(cfg.DBName, "/") {
		return "", fmt.Errorf("%w: mysql URL needs a database name: mysql+pymysql://user:pass@host[:port]/dbname", ErrInvalidConnection)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "3306"
	} else if err := checkPort(port); err != nil {
		return "", err
	}
	if host == "" {
		host = "localhost"
	}
	cfg.Addr = net.JoinHostPort(host, port)
	for key, vals := range u.Query() {
		val := vals[len(vals)-1]
		switch key {
		case "charset":
			// Ferry always talks utf8mb4; utf8 (MySQL's 3-byte utf8mb3) is
			// what oslo.db samples say, and is widened.
			if v := strings.ToLower(val); v != "utf8" && v != "utf8mb4" {
				return "", fmt.Errorf("%w: unsupported mysql charset %q (Ferry uses utf8mb4)", ErrInvalidConnection, val)
			}
		case "unix_socket":
			cfg.Net, cfg.Addr = "unix", val
		case "connect_timeout", "read_timeout", "write_timeout":
			secs, err := strconv.Atoi(val)
			if err != nil || secs <= 0 {
				return "", fmt.Errorf("%w: %s must be a positive number of seconds, not %q", ErrInvalidConnection, key, val)
			}
			d := time.Duration(secs) * time.Second
			switch key {
			case "connect_timeout":
				cfg.Timeout = d
			case "read_timeout":
				cfg.ReadTimeout = d
			default:
				cfg.WriteTimeout = d
			}
		case "plugin":
			// oslo.db SQLAlchemy plugins (devstack adds plugin=dbcounter).
		default:
			return "", fmt.Errorf("%w: unsupported mysql connection parameter %q", ErrInvalidConnection, key)
		}
	}
	return cfg.FormatDSN(), nil
}

func postgresDSN(u *url.URL) (string, error) {
	if port := u.Port(); port != "" {
		if err := checkPort(port); err != nil {
			return "", err
		}
	}
	if strings.Contains(strings.TrimPrefix(u.Path, "/"), "/") {
		return "", fmt.Errorf("%w: postgresql URL path must be a single database name", ErrInvalidConnection)
	}
	q := u.Query()
	q.Del("plugin")
	if enc := q.Get("client_encoding"); enc != "" {
		if e := strings.ToLower(strings.ReplaceAll(enc, "-", "")); e != "utf8" {
			return "", fmt.Errorf("%w: unsupported postgresql client_encoding %q (Ferry uses UTF8)", ErrInvalidConnection, enc)
		}
		q.Del("client_encoding")
	}
	if q.Get("connect_timeout") == "" {
		q.Set("connect_timeout", strconv.Itoa(int(defaultConnectTimeout.Seconds())))
	}
	out := url.URL{Scheme: "postgres", User: u.User, Host: u.Host, Path: u.Path, RawQuery: q.Encode()}
	return out.String(), nil
}

func checkPort(port string) error {
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%w: invalid port %q", ErrInvalidConnection, port)
	}
	return nil
}

// Redact returns connection with its password (in the user info or a
// "password" query parameter) replaced by "***", for logs and errors. A
// string that does not parse as a URL is reduced to its scheme.
func Redact(connection string) string {
	scheme, _, ok := strings.Cut(connection, "://")
	if !ok || scheme == "" || strings.ContainsAny(scheme, "@:/") {
		return "<malformed URL>"
	}
	u, err := url.Parse(connection)
	if err != nil || u.Opaque != "" {
		return scheme + "://<malformed URL>"
	}
	// url.URL.String would escape "***"; write a placeholder, then swap it.
	const placeholder = "REDACTED"
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), placeholder)
		}
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", placeholder)
		u.RawQuery = q.Encode()
	}
	return strings.ReplaceAll(u.String(), placeholder, "***")
}

// Option configures Open.
type Option func(*options)

type options struct {
	logger        *slog.Logger
	slowThreshold time.Duration
	now           func() time.Time
	maxOpenConns  int
}

// WithLogger sends gorm's warnings (slow queries, at warn level) to l.
// Without it the database layer logs nothing: errors are returned.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithSlowThreshold sets how long a query runs before it is logged as slow
// (default 1 s). Only meaningful with WithLogger.
func WithSlowThreshold(d time.Duration) Option { return func(o *options) { o.slowThreshold = d } }

// WithNowFunc replaces the clock used for created_at, updated_at, heartbeats
// and leases (tests). Times are stored in UTC, truncated to microseconds.
func WithNowFunc(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithMaxOpenConns sets the connection pool size for MySQL and PostgreSQL
// (default 20). SQLite always uses a single connection.
func WithMaxOpenConns(n int) Option { return func(o *options) { o.maxOpenConns = n } }

// DB is an open Ferry database. It is safe for concurrent use.
type DB struct {
	gorm     *gorm.DB
	sql      *sql.DB
	dialect  Dialect
	redacted string
	nowFunc  func() time.Time
}

// Open connects to the database named by an oslo.db connection URL (see
// ParseConnection) and checks that it answers. It does not create or migrate
// the schema: call Sync (ferry-manage db sync) or CheckCurrent.
//
// SQLite databases use WAL, a 10 s busy timeout, foreign keys, immediate
// (write-locking) transactions and a single connection, so that concurrent
// writers within the process queue instead of failing with "database is
// locked". "sqlite://" opens a private in-memory database.
func Open(ctx context.Context, connection string, opts ...Option) (*DB, error) {
	o := options{slowThreshold: defaultSlowThreshold, maxOpenConns: defaultMaxOpenConns, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	dialect, dsn, err := ParseConnection(connection)
	if err != nil {
		return nil, err
	}
	redacted := Redact(connection)

	sqlDB, err := openSQL(dialect, dsn)
	if err != nil {
		return nil, fmt.Errorf("db: open %s: %w", redacted, err)
	}
	switch dialect {
	case DialectSQLite:
		// One connection: writes queue in database/sql instead of racing
		// for SQLite's lock, and an in-memory database lives as long as
		// its connection does.
		sqlDB.SetMaxOpenConns(1)
		sqlDB.SetMaxIdleConns(1)
		sqlDB.SetConnMaxLifetime(0)
		sqlDB.SetConnMaxIdleTime(0)
	default:
		n := max(o.maxOpenConns, 1)
		sqlDB.SetMaxOpenConns(n)
		sqlDB.SetMaxIdleConns(min(defaultMaxIdleConns, n))
		sqlDB.SetConnMaxLifetime(defaultConnMaxLifetime)
		sqlDB.SetConnMaxIdleTime(defaultConnMaxIdleTime)
	}
	if err := sqlDB.PingContext(ctx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("db: connect to %s: %w", redacted, err)
	}

	now := o.now
	d := &DB{sql: sqlDB, dialect: dialect, redacted: redacted}
	d.nowFunc = func() time.Time { return now().UTC().Truncate(time.Microsecond) }

	var dialector gorm.Dialector
	switch dialect {
	case DialectSQLite:
		dialector = &sqlite.Dialector{Conn: sqlDB}
	case DialectMySQL:
		dialector = gormmysql.New(gormmysql.Config{Conn: sqlDB})
	case DialectPostgres:
		dialector = postgres.New(postgres.Config{Conn: sqlDB})
	}
	g, err := gorm.Open(dialector, &gorm.Config{
		Logger:               newGormLogger(o.logger, o.slowThreshold),
		NowFunc:              d.nowFunc,
		TranslateError:       true,
		DisableAutomaticPing: true,
	})
	if err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("db: open %s: %w", redacted, err)
	}
	d.gorm = g
	return d, nil
}

func openSQL(dialect Dialect, dsn string) (*sql.DB, error) {
	switch dialect {
	case DialectSQLite:
		return sql.Open(sqlite.DriverName, dsn)
	case DialectMySQL:
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return nil, fmt.Errorf("%w: mysql DSN", ErrInvalidConnection)
		}
		// The driver's default logger writes to stderr; errors reach the
		// caller anyway.
		cfg.Logger = discardMySQLLogger{}
		connector, err := mysql.NewConnector(cfg)
		if err != nil {
			return nil, err
		}
		return sql.OpenDB(connector), nil
	case DialectPostgres:
		return sql.Open("pgx", dsn)
	}
	return nil, fmt.Errorf("%w: unknown dialect %q", ErrInvalidConnection, dialect)
}

type discardMySQLLogger struct{}

func (discardMySQLLogger) Print(...any) {}

// Close closes the connection pool.
func (d *DB) Close() error { return d.sql.Close() }

// Ping checks that the database answers.
func (d *DB) Ping(ctx context.Context) error {
	if err := d.sql.PingContext(ctx); err != nil {
		return fmt.Errorf("db: ping %s: %w", d.redacted, err)
	}
	return nil
}

// Dialect returns the database engine in use.
func (d *DB) Dialect() Dialect { return d.dialect }

// String returns the connection URL with the password redacted.
func (d *DB) String() string { return d.redacted }

// now returns the current time in UTC, truncated to microseconds (the
// precision of MySQL DATETIME(6) and PostgreSQL timestamps), so that values
// read back compare equal to the ones written.
func (d *DB) now() time.Time { return d.nowFunc() }

// Now is the store's clock (UTC), the one its timestamps use.
func (d *DB) Now() time.Time { return d.now() }
