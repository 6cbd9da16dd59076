"""Labeling stage (evidence, labelers, scoring): arrives with its own issue; nothing here yet."""
