"""``mygpt serve``: an OpenAI-compatible HTTP server and chat page for a trained checkpoint."""
