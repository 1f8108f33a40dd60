"""Three-source data curation: raw videos -> training pairs (a Parquet manifest).

Sources: real pairs (OpenS2V-5M / OpenS2V-Nexus annotations, a folder or CSV of videos),
synthetic compositions (an image-edit backend puts each subject into another context, so a
reference is never a crop of its own target frames; SpriteWorld is the embedded default), and
captured videos (a documented folder layout). Steps are pure functions of a row
(`curation.steps`); engines (`curation.engine`) run the same step functions on a local process
pool or on Ray Data. The manifest schema is in `curation.schema`; `docs/curation.md` has the
figures and the commands.
"""
