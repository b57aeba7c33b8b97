// Package e2e holds the end-to-end tests (build tag e2e): the local
// stack's ferry-api, agents, Keystone, RabbitMQ and Ceph clusters, driven
// over REST with real tokens. ./tox-like-ci -e e2e runs them.
package e2e
