package amqp

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseTransportURL(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"rabbit://guest:guest@127.0.0.1:5672/", []string{"amqp://guest:guest@127.0.0.1:5672/"}},
		{"rabbit://u:p@h1,h2:5673/ferry", []string{"amqp://u:p@h1:5672/ferry", "amqp://u:p@h2:5673/ferry"}},
		{"rabbit://u:p%40s@h:5671/v?ssl=1", []string{"amqps://u:p%40s@h:5671/v"}},
		{"amqps://h/", []string{"amqps://h:5672/"}},
	}
	for _, tc := range cases {
		got, err := ParseTransportURL(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseTransportURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"kafka://h/", "rabbit:///", "rabbit://u:secret@h:x y/", "rabbit://,/"} {
		_, err := ParseTransportURL(bad)
		if err == nil {
			t.Errorf("ParseTransportURL(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("password leaked: %v", err)
		}
	}
}
