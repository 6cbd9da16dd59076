"""The engine's bottom layer: what every other layer shares and nothing here depends on torch's runs.

errors (the one UserError tree), names (the names users type, checkable before torch loads), registry
(the method registry), nodes (node ids and edge names), graph (the computational graph: reader slots,
edges, k/v groups, upstream writers), positional_graph (position-aware edges), circuit (the versioned
circuit file) and notebook (its notebook views), lazy (PEP 562 exports). Imports nothing from the
layers above (tests/test_layering.py), torch included."""
