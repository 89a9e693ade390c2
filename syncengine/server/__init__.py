"""The reference server: speaks the syncengine protocol (docs/protocol.md)."""
