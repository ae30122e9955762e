"""The gateway: config loading, the HTTP server, wiring, conversation history and metrics."""
