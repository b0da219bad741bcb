"""The contract every stage shares: the release reader, the release layout, the manifest, tile maths,
shared names, errors."""
