"""The engine layer: the patched forward over a Graph (patching: the plain and the cached run) and its
position-aware form (positions). Imports only discovery.core and discovery.model."""
