"""The gateway: config, HTTP server, channel and provider wiring, conversation history, metrics.

``zeroclaw serve`` runs :func:`zeroclaw.gateway.app.serve`. Each piece is its own module and
imports its HTTP or metrics library itself, so importing this package loads none of them.
"""
