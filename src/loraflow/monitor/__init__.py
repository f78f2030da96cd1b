"""Monitoring: engine output turned into one typed event stream, and the stall detector."""
