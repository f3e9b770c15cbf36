// Package store persists what DaemonEye records. On the agent, Local is the
// Pebble store that sits between capture and the uplink: the agent appends the
// Events its capture.Source produces, Local numbers them with the agent's
// persistent sequence (the (agent_id, seq) the center deduplicates on), keeps
// them by seq and by time for batching, replay and local queries, and applies
// them to the process table that answers lineage questions. Retention bounds it
// by age and size. The proxy and uplink queues are in store/wal; the
// center's SQLite store is store/sqlstore. At the center, PurgeValues is
// retention's part in its Pebble batch store: a purged batch keeps its key
// and loses its value.
package store
