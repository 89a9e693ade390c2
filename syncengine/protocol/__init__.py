"""Protocol v1, pure and shared by the engine and the reference server.

- :mod:`~syncengine.protocol.events`: the event types (server events and engine events).
- :mod:`~syncengine.protocol.ops`: operations, their limits and their validation.
- :mod:`~syncengine.protocol.bodies`: every request and response body, and live frame.
- :mod:`~syncengine.protocol.errors`: the rejection codes and their HTTP statuses.
- :mod:`~syncengine.protocol.codec`: the one converter, encode/decode with input limits.
- :mod:`~syncengine.protocol.requests`: requests as data (method, escaped path, query, body).

Nothing here performs I/O or reads a clock.
"""
