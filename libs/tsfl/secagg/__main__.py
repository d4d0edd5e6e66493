"""``python -m tsfl.secagg``: the (k, t) table of :mod:`tsfl.secagg.params` (σ = 40)."""

from tsfl.secagg.params import markdown_table, table

print(markdown_table(table()))
