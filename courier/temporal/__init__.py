"""Connecting to Temporal: address, namespace, TLS or API key, the payload codec."""
