"""Built-in plugins: every streamsnap feature, registered like a third-party plugin."""
