"""Cluster gossip: partial views, signed envelopes, epidemic broadcast, catch-up."""
