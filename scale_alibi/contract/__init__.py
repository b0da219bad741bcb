"""The contract every stage shares: the release layout on disk, tile maths, shared names, errors."""
