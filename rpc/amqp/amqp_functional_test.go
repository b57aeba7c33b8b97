//go:build functional

package amqp

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func transportURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("TRANSPORT_URL")
	if u == "" {
		t.Fatal("TRANSPORT_URL is not set: run through ./tox-like-ci (it exports $FERRY_STACK_DIR/stack.env)")
	}
	return u
}

// A durable queue, persistent publishes confirmed by the broker, and manual
// acks: an unacknowledged message comes back to the next consumer.
func TestPublishConfirmConsumeAck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tu := transportURL(t)
	if err := Ping(ctx, tu); err != nil {
		t.Fatal(err)
	}
	uris, err := ParseTransportURL(tu)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := dial(ctx, uris[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue := fmt.Sprintf("ferry.functional.%d", time.Now().UnixNano())
	q, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			t.Errorf("queue delete: %v", err)
		}
	}()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var confirms []*amqp.DeferredConfirmation
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q.Name, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: "application/json",
			MessageId: fmt.Sprint(i), Body: fmt.Appendf(nil, `{"n": %d}`, i),
		})
		if err != nil {
			t.Fatal(err)
		}
		confirms = append(confirms, dc)
	}
	for i, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			t.Fatalf("publish %d not confirmed: %v", i, err)
		}
	}

	// First consumer takes one message and closes without acking it.
	ch1, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch1.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	d1, err := ch1.ConsumeWithContext(ctx, q.Name, "c1", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := <-d1
	if first.MessageId != "0" {
		t.Fatalf("first message %q, want 0", first.MessageId)
	}
	ch1.Close()

	// A second consumer acks everything; message 0 comes again, redelivered.
	ch2, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch2.Close()
	if err := ch2.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	d2, err := ch2.ConsumeWithContext(ctx, q.Name, "c2", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	redelivered := false
	for len(seen) < n {
		select {
		case d := <-d2:
			seen[d.MessageId] = true
			if d.MessageId == "0" && d.Redelivered {
				redelivered = true
			}
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d messages", len(seen), n)
		}
	}
	if !redelivered {
		t.Error("the unacked message was not redelivered")
	}
	if qi, err := ch2.QueueDeclarePassive(q.Name, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil || qi.Messages != 0 {
		t.Errorf("queue not empty after acks: %+v %v", qi, err)
	}
}

func TestPingUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Port 1 on loopback: nothing listens there.
	if err := Ping(ctx, "rabbit://guest:secret@127.0.0.1:1/"); err == nil {
		t.Fatal("ping of a closed port succeeded")
	} else if s := err.Error(); strings.Contains(s, "secret") {
		t.Errorf("password in error: %s", s)
	}
}
