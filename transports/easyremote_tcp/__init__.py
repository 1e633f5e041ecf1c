"""TCP transport for EasyRemote: length-prefixed envelope frames over anyio streams, optional TLS."""
