package rpc

import "context"

// MethodNotification marks an outbox row that is an OpenStack notification
// (an oslo.messaging v2 message, published as it is on the routing key
// notifications.<priority>), not a Ferry envelope. Since 1.3.
const MethodNotification = "oslo.notification"

// NotificationTopic is the topic of OpenStack notifications: they are
// published with the routing key <topic>.<priority> (notifications.info).
const NotificationTopic = "notifications"

// RawPublisher publishes a body as it is (no Ferry envelope), persistent,
// and returns once the broker confirmed it (the amqp Transport is one).
type RawPublisher interface {
	PublishRaw(ctx context.Context, target Target, body []byte) error
}
