"""Settings shared across stages: the setting() field helper, the method lists, seed limits."""
