"""The pipeline layer: options and their bounds (options), circuit selection (selection), evaluation
(evaluation), the default pipeline's target search (auto), node and neuron levels (levels), result
warnings (sanity), `discover` / `evaluate` (discover) and the Ray workers (distributed). Imports the
layers below it: core, model, task_library, engine, methods (and features)."""
