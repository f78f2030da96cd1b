"""What a training platform built on loraflow needs: credits, a model registry, review and limits."""

from __future__ import annotations
