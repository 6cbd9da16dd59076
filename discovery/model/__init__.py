"""The model layer: Hugging Face models wrapped in adapters (adapters), tasks and their batches (tasks),
metrics over the logits (metrics), the representative example row (example_row). The built-in tasks
(discovery/task_library/) and the shipped toy models' names sit beside it. Imports only discovery.core."""
