"""The embedded default model: procedural captioned scenes, the quickstart concept, and its pretraining."""
