"""Test support for EasyRemote and for transport authors: the in-memory transport, fault
injection (a chaos proxy, real processes) and the transport contract suite."""

from __future__ import annotations

from .chaos import ChaosProxy, ThreadedChaosProxy
from .memory import MemoryConnection, MemoryTransport
from .processes import GatewayProcess, ManagedProcess, ProcessExitedError, PythonProcess, free_port

__all__ = [
    "ChaosProxy",
    "GatewayProcess",
    "ManagedProcess",
    "MemoryConnection",
    "MemoryTransport",
    "ProcessExitedError",
    "PythonProcess",
    "ThreadedChaosProxy",
    "free_port",
]
