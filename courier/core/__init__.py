"""Leaf modules every layer may use: identities, durations, rates, metrics, codecs, logs."""
