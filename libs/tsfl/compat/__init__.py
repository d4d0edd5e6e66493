"""Compatibility with other federated-learning frameworks' client code
(:mod:`tsfl.compat.flower`: Flower clients, unchanged)."""
