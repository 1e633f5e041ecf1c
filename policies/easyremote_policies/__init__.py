"""The shipped retry policies and health probes of EasyRemote."""
