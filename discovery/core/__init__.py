"""The engine's bottom layer: what every other layer shares and nothing here depends on torch's runs.

errors (the one UserError tree), names (the names users type, checkable before torch loads), graph
(the computational graph: nodes, edges, node ids), circuit (the versioned circuit file), lazy (PEP 562
exports). Imports nothing from the layers above (tests/test_layering.py)."""
