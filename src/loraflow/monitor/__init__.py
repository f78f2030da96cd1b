"""Monitoring: engine output lines turned into one typed event stream (tqdm, the builtin's JSON lines,
log patterns) and the stall detector."""
