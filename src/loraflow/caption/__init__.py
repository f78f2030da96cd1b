"""Captioning: pluggable captioners (WD14, Florence-2, JoyCaption, Qwen-VL) run in their own process,
cached by image hash, never overwriting a user's caption unless asked."""
