"""scale-alibi curation: STAC scenes to aligned web-mercator S1 / S2 / NAIP tile triplets."""
