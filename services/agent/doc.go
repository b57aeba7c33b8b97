// Package agent is ferry-agent: it runs next to one region's Ceph cluster,
// reads and writes RBD images there and streams them to and from the agents
// of other regions. It never touches the database: it takes commands from
// ferry-api over the bus (signed: see rpc.Verifier) and reports back.
//
// Files, as nova splits a service:
//
//   - agent.go: the process: configuration, keys and certificates, the
//     cluster connection pool, the data port, and Serve, which runs the
//     background loops (data port, the two consumers, heartbeats, health
//     probe, metrics) under one errgroup.
//   - manager.go: the handlers of every method the agent serves (start,
//     cancel, prepare, finish, abort, query, cleanup, settle,
//     replication.drill, replication.cleanup, replication.promote,
//     replication.demote, replication.rename and
//     replication.group_snapshot), each checking ferry-api's signature
//     or grant first, and the background work a command starts (a
//     drill's flatten).
//   - rpcapi.go: how one agent calls another (RemoteDest, the destination
//     as a transfer.Preparer over the bus).
//   - runner.go: the transfers this agent is the source of: slots, epochs,
//     cancels, status reports.
//   - liveness.go: heartbeats (boot id, running set, capacity) and the
//     cluster health probe.
//   - metrics.go: the agent's Prometheus metrics.
//   - harness.go: `ferry-agent transfer`, one transfer without ferry-api.
package agent
