"""Live camera post-processing: tracks across frames, smoothed decisions, alerts and their sinks."""
