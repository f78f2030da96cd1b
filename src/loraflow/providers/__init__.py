"""Providers lease hosts (a machine you have, a rented Vast.ai instance); nothing about training."""

from __future__ import annotations
