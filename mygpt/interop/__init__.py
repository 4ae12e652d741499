"""The Hugging Face format, both ways: `mygpt export` and `mygpt import`."""
