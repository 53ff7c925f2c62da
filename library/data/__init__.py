"""Training data: dataset TOML and DreamBooth folders, captions, aspect-ratio buckets, images, latent cache."""
