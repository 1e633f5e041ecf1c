"""Test support for EasyRemote and for transport authors: the in-memory transport and the contract suite."""
