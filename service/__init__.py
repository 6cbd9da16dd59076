"""Service (API, queue, workers, store): arrives with its own issue; nothing here yet."""
