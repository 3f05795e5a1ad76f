"""The node agent's side of the chained CNI plugin (documented in full below once complete)."""
