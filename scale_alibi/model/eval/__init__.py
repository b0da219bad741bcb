"""Evaluation of frozen encoders on classification tasks, as the paper's Table 2.

A task (`task.TaskData`: GEO-Bench through `geobench_data`, or the synthetic world's land cover
through `world_task`) gives uint8 RGB images per split; `embeddings` turns them into frozen
features per encoder column (SA-high: the NAIP encoder at 512 px, SA-low: the S2 encoder at
256 px, CROMA: a `croma` checkpoint's optical encoder at 256 px); `probes` (MLP, kNN) and
`clustering` (k-means, UMAP + k-means, Hungarian scoring) measure them; `report` writes the
Markdown/CSV table, confusion matrices and UMAP scatters; `run` ties them together for
`curate eval` (`cli`).
"""
