package amqp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ParseTransportURL turns an oslo.messaging transport_url
// (rabbit://user:pass@host1:5672,host2:5672/vhost?ssl=1) into one AMQP URI
// per host, in order. The password never appears in an error.
func ParseTransportURL(transportURL string) ([]string, error) {
	u, err := url.Parse(transportURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("transport_url: %w", err)
	}
	scheme := "amqp"
	switch u.Scheme {
	case "rabbit", "amqp":
	case "amqps":
		scheme = "amqps"
	default:
		return nil, fmt.Errorf("transport_url: scheme %q not supported (want rabbit://)", u.Scheme)
	}
	switch strings.ToLower(u.Query().Get("ssl")) {
	case "1", "true", "yes", "on":
		scheme = "amqps"
	}
	if u.Host == "" {
		return nil, errors.New("transport_url: no host")
	}
	vhost := strings.TrimPrefix(u.Path, "/")
	var uris []string
	for h := range strings.SplitSeq(u.Host, ",") {
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, "5672")
		}
		au := url.URL{Scheme: scheme, User: u.User, Host: h, Path: "/" + vhost}
		if vhost == "" {
			au.Path = "/"
		}
		uris = append(uris, au.String())
	}
	if len(uris) == 0 {
		return nil, errors.New("transport_url: no host")
	}
	return uris, nil
}

// Ping opens and closes one connection to the first broker that answers.
func Ping(ctx context.Context, transportURL string) error {
	uris, err := ParseTransportURL(transportURL)
	if err != nil {
		return err
	}
	var errs []error
	for _, uri := range uris {
		conn, err := dial(ctx, uri)
		if err == nil {
			return conn.Close()
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("no broker reachable: %w", errors.Join(errs...))
}

// dial connects with the context's deadline (10 s at most) as timeout.
func dial(ctx context.Context, uri string) (*amqp.Connection, error) {
	return dialNamed(ctx, uri, "ferry")
}

// dialNamed is dial with the connection name the broker shows (rabbitmqctl
// list_connections client_properties, management UI).
func dialNamed(ctx context.Context, uri, name string) (*amqp.Connection, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	cfg := amqp.Config{
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			return d.DialContext(ctx, network, addr)
		},
		Properties: amqp.Table{"connection_name": name},
	}
	conn, err := amqp.DialConfig(uri, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", redact(uri), err)
	}
	return conn, nil
}

func redact(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
