"""gRPC transport for EasyRemote (grpc.aio): keepalive, channel-state probe, health service."""
