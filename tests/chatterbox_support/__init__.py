"""Offline test support for a Chatterbox TTS engine (needs the chatterbox venv,
see install.sh): ``from chatterbox_support import tiny_model``."""
