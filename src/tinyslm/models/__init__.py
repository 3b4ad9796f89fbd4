"""Model aliases (offline zoo, GGUF conversion), loading (local, Hub, adapters), dropout, the completion loss."""
