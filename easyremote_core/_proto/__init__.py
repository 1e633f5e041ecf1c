"""Generated protobuf modules of the EasyRemote wire protocol."""
