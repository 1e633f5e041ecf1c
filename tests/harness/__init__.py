"""Tests of the fault-injection harness itself: the chaos proxy, process control and network namespaces."""
