"""What a training platform built on loraflow needs: credits and quotes, the model registry and review,
retention (gc) and the operator's limits."""

from __future__ import annotations
