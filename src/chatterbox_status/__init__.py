"""chatterbox-status: a text-to-speech server for Chatterbox with real-time status."""

__version__ = "0.1.0"
