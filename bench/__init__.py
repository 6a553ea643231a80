"""The load benchmark and the idle-socket soak of the token provider.

``python -m bench`` (``make bench``) starts every server under test itself on a
free loopback port, drives complete token flows from a separate load-generator
process (``bench.loadgen``) and reports flows/s, latency, server CPU per flow
and memory per idle socket, each configuration also as a ratio to the plain
``websockets`` floor (``bench.floor``) measured in the same run.

``python -m bench soak --minutes 10`` (``make soak``) holds idle WebSockets on
two workers sharing a redis-server, then checks every one still completes a flow.
"""
