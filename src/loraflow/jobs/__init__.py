"""Jobs: the persisted state machine, its event log, and the stages that move it."""
