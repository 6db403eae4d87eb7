"""Governance as pure functions over a KV transaction: signed requests, proposals, the constitution."""
