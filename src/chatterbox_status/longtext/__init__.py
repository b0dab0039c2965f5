"""Durable long-text jobs: text too long for one request, generated chunk by chunk in the
background, kept on disk, resumable after a restart (chatterbox-tts-api's /audio/speech/long)."""
