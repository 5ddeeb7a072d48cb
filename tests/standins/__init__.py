"""Stand-ins for what cannot run on this machine (an Ollama server). Test use only."""
