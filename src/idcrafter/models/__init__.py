"""Generator models: transformer, subject stream, attention and video codecs."""
