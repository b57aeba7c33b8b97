package agent

import (
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-project/ferry/services/agent/stream"
	"github.com/ferry-project/ferry/services/internal/config"
)

// The [agent] limits that config validation enforces (so that ferry-manage
// config check refuses them) are the data stream's own: a value config
// accepts is never refused by the engine (streams 64 once passed the
// config and then failed every transfer).
func TestConfigLimitsAreTheEngines(t *testing.T) {
	field := func(name string) reflect.StructTag {
		f, ok := reflect.TypeFor[config.Agent]().FieldByName(name)
		if !ok {
			t.Fatalf("config.Agent has no %s", name)
		}
		return f.Tag
	}
	num := func(tag reflect.StructTag, key string) int64 {
		v, err := strconv.ParseInt(tag.Get(key), 10, 64)
		if err != nil {
			t.Fatalf("%s %q: %v", key, tag.Get(key), err)
		}
		return v
	}
	if s := field("Streams"); num(s, "min") < 1 || num(s, "max") != stream.MaxStreams {
		t.Errorf("[agent] streams allows %s..%s, the stream sends with 1..%d", s.Get("min"), s.Get("max"), stream.MaxStreams)
	}
	if c := field("ChunkSize"); num(c, "min") < stream.MinChunkSize || num(c, "max") > stream.MaxChunkSize {
		t.Errorf("[agent] chunk_size allows %s..%s, the stream takes %d..%d", c.Get("min"), c.Get("max"), stream.MinChunkSize, stream.MaxChunkSize)
	}
	for _, v := range strings.Split(field("Compression").Get("choices"), ",") {
		if _, err := stream.ParseCompression(v); err != nil {
			t.Errorf("[agent] compression %q is a config choice the stream refuses: %v", v, err)
		}
	}
}
