"""From a served release to model inputs: the streaming loader, PNG decoding, normalisation stats."""
