"""Hosts: places where commands run detached and files live (this machine, or one over SSH)."""

from loraflow.hosts.base import Handle, Host, ProcessStatus

__all__ = ["Handle", "Host", "ProcessStatus"]
