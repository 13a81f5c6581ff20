"""HTTP routes. They parse, schedule and respond; they hold no tensors and call no model."""
