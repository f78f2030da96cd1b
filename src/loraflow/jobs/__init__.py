"""Job records: the persisted state machine, its event log, the queue and the cost arithmetic of leases,
in SQLite or PostgreSQL; everything above reads and moves jobs through the Store."""
