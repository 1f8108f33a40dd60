"""idcrafter: multi-subject, identity-preserving video generation.

Importing the package is cheap and has no side effects; heavy modules (torch models,
diffusers pipelines, judge backends) are imported where they are used.
"""

__version__ = "0.1.0"
