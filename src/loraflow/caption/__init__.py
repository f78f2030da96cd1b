"""Captioning: pluggable captioners run in their own process, cached by image hash, never overwriting
a user's caption unless asked."""
