"""Providers lease and price machines: the Vast.ai client, offer ranking and the dead-man switch, and the
estimator that prices a spec on any machine before anything is rented."""

from __future__ import annotations
