"""Model specs, weights and the short-clip Whisper encoder."""
