"""Hosts: places where commands run detached and files live (this machine, or one over SSH), with the
process, log and exit-code files that let a trainer outlive whoever started it."""

from loraflow.hosts.base import Handle, Host, ProcessStatus

__all__ = ["Handle", "Host", "ProcessStatus"]
